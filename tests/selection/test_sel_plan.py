"""A plan made from a selection round-trips through JSON unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockprune.selection import (
    CalibrationSettings,
    PrunePlan,
    fast_block_select,
    parse_run_key,
    run_key,
    select,
)
from blockprune.selection.synthetic import TableScorer, dpi_run_table

pytestmark = pytest.mark.unit

CAL = CalibrationSettings(corpus="wikitext-2-raw-v1", n_samples=128, seq_len=512, seed=7)


def test_fbs_plan_round_trips(tmp_path: Path) -> None:
    table = dpi_run_table(24, seed=9, synergy=0.9)
    sel = fast_block_select(24, 5, TableScorer(table))
    plan = sel.to_plan(
        "HuggingFaceTB/SmolLM2-135M",
        24,
        estimator="mi.ksg",
        estimator_params={"k": 3, "n_tokens": 4096, "standardize": True},
        calibration=CAL,
        revision="abc123",
        scores={"mi": [table[(i,)] for i in range(24)]},
    )
    assert plan.method == "mi_fbs" and plan.blocks == sel.blocks
    assert plan.run_scores == {run_key(r): v for r, v in sel.run_scores.items()}
    assert plan.info["trace"] and plan.info["history"][0] == list(sel.history[0])
    assert plan.info["evaluations"] == sel.evaluations
    again = PrunePlan.from_json(plan.to_json())
    assert again == plan
    assert again.calibration == CAL
    assert PrunePlan.load(plan.save(tmp_path / "plan.json")) == plan


def test_entrodrop_attention_plan_round_trips() -> None:
    delta_h = [-0.4, -0.2, 0.05, 0.3, 0.02, 0.2, 0.1, 0.4]
    sel = select("entrodrop", 8, 2, block_scores=delta_h)
    plan = sel.to_plan("m", 8, granularity="attention", estimator="entropy.knn", scores={"delta_h": delta_h})
    assert plan.info["s_start"] == 2 and plan.granularity == "attention"
    assert PrunePlan.from_json(plan.to_json()) == plan


def test_plan_with_all_fields_round_trips() -> None:
    plan = PrunePlan(
        model_id="Qwen/Qwen2.5-0.5B",
        n_blocks=24,
        blocks=(20, 3, 11),
        granularity="mlp",
        method="shortgpt",
        estimator="bi",
        estimator_params={"eps": 1e-6, "tokens": "all"},
        calibration=CAL,
        revision="main",
        scores={"bi": [0.1 * i for i in range(24)]},
        run_scores={"3-3": 0.5, "10-12": 0.25},
        info={"iterations": 2, "history": [[3, 11, 20]], "note": "ΔH"},
    )
    again = PrunePlan.from_json(plan.to_json())
    assert again == plan and again.blocks == (3, 11, 20)


def test_run_keys() -> None:
    assert run_key((3, 4, 5)) == "3-5" and run_key((7,)) == "7-7"
    assert parse_run_key("3-5") == (3, 4, 5)
    with pytest.raises(ValueError):
        parse_run_key("5-3")
    with pytest.raises(ValueError):
        parse_run_key("x")


def _plan_json(**changes: object) -> dict:
    d = PrunePlan(model_id="smollm2-135m", n_blocks=30, blocks=(3, 4), calibration=CAL).to_dict()
    for k, v in changes.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return d


@pytest.mark.parametrize(("content", "message"), [
    (_plan_json(blocks=None), "missing key(s) blocks"),
    (_plan_json(model_id=None, n_blocks=None), "missing key(s) model_id, n_blocks"),
    (_plan_json(layers=[1, 2]), "unknown key(s) layers"),
    ([_plan_json()], "must be a JSON object, got a list"),
    (_plan_json(blocks="3,4"), "blocks must be a list of integers"),
    (_plan_json(calibration={"corpus": "x", "n_samples": 1}), "calibration has missing key(s) seq_len"),
    (_plan_json(n_blocks="30"), "n_blocks must be an integer"),
])
def test_a_malformed_plan_file_is_one_line_naming_the_file(tmp_path: Path, content: object, message: str) -> None:
    """Before: a TypeError/KeyError traceback that named neither the file nor the key."""
    import json

    from blockprune.errors import BadInputError

    f = tmp_path / "plan.json"
    f.write_text(json.dumps(content))
    with pytest.raises(BadInputError) as e:
        PrunePlan.load(f)
    assert str(f) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(("data", "message"), [
    (b'{"model_id": "smollm2-135m", "n_bl', "not valid JSON"),
    ('{"model_id": "caf\xe9"}'.encode("latin-1"), "not UTF-8"),
])
def test_a_plan_file_that_is_not_json_names_the_file(tmp_path: Path, data: bytes, message: str) -> None:
    from blockprune.errors import BadInputError

    f = tmp_path / "plan.json"
    f.write_bytes(data)
    with pytest.raises(BadInputError, match=message) as e:
        PrunePlan.load(f)
    assert str(f) in str(e.value)
    with pytest.raises(BadInputError, match="does not exist"):
        PrunePlan.load(tmp_path / "missing.json")
