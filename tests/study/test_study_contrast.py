"""The "Compared with" section: two hand-made studies, their claims side by side, and the flips it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from blockprune.study.contrast import contrast_section
from blockprune.study.record import RunRecord, baseline_key, calibration_key, plan_key, trial_key
from blockprune.study.spec import StudySpecError, parse_spec
from blockprune.study.tables import Study

pytestmark = pytest.mark.unit
TASKS, CORPORA = ["piqa", "boolq"], ["a", "b"]


def _sel(model: str, i: int, method: str, est: str | None, n: int, blocks: tuple[int, ...]) -> RunRecord:
    ck = calibration_key(model, "a", 0, 8, 64)
    tags = {"study.kind": "selection", "study.key": trial_key(ck, method, est, "layer", n), "model": model,
            "corpus": "a", "seed": "0", "reference": "1", "method": method, "estimator": est or "none",
            "granularity": "layer", "n_prune": str(n), "blocks": ",".join(map(str, blocks)),
            "plan_key": plan_key(model, "layer", blocks)}
    return RunRecord(f"{model[:3]}{i:05d}xx", tags, {"scoring_seconds": 1.0, "logged_at": float(i)})


def _eval(model: str, i: int, blocks: tuple[int, ...] | None, ppl: float, acc: float, n: float) -> RunRecord:
    return RunRecord(f"{model[:3]}ev{i:04d}yy", {"study.kind": "evaluation",
                                                 "study.key": plan_key(model, "layer" if blocks else "", blocks)},
                     {"ppl.a": ppl, "ppl.b": ppl, "piqa.acc": acc, "boolq.acc": acc, "piqa.n": n, "boolq.n": n,
                      "logged_at": 100.0 + i})


def _study(model: str, entro_wins: bool, dense_acc: float, n: float) -> Study:
    """One cell (2 layers): ShortGPT ppl 20; EntroDrop (authors' reading) 15 if it wins, else 30. Constant answer
    0.5 on both tasks; the dense model scores ``dense_acc`` on ``n`` questions per task."""
    return Study.from_runs(_runs(model, entro_wins, dense_acc, n), TASKS, CORPORA, [model])


def _runs(model: str, entro_wins: bool, dense_acc: float, n: float) -> list[RunRecord]:
    return [_sel(model, 1, "shortgpt", None, 2, (3, 4)),
            _sel(model, 2, "entrodrop", "entropy.knn_window", 2, (1, 2)),
            _eval(model, 0, None, 10.0, dense_acc, n), _eval(model, 1, (3, 4), 20.0, 0.5, n),
            _eval(model, 2, (1, 2), 15.0 if entro_wins else 30.0, 0.5, n),
            RunRecord(f"{model[:3]}bl", {"study.kind": "baseline", "study.key": baseline_key("d")},
                      {"piqa.constant": 0.5, "boolq.constant": 0.5, "piqa.chance": 0.5, "boolq.chance": 0.5})]


def test_flips_are_named_and_counts_sit_side_by_side() -> None:
    small = _study("small", entro_wins=False, dense_acc=0.52, n=50)  # 0.02 above: well under 3 SE
    large = _study("large", entro_wins=True, dense_acc=0.75, n=400)
    text = "\n".join(contrast_section(large, small, "docs/SMALL.md"))
    assert "## Compared with docs/SMALL.md" in text
    assert "| *EntroDrop (authors' reading) beats ShortGPT*, by perplexity (cells) | 0 of 1 | 1 of 1 |" in text
    assert "*EntroDrop (authors' reading) beats ShortGPT* held in few cells there (0 of 1) and in most here" in text
    # SE: small √(2·0.52·0.48/50)/2 = 0.0500 and constant 0.0500 → 0.02 / 0.0707 = 0.3; large
    # √(2·0.75·0.25/400)/2 = 0.0153, constant √(2·0.25/400)/2 = 0.0177 → 0.25 / 0.0234 = 10.7
    assert "| small 0.3 | large 10.7 |" in text
    assert "the dense model's accuracy clears the best constant answer by 3 combined standard errors here" in text
    same = "\n".join(contrast_section(small, small, "docs/SMALL.md"))
    assert "**What changes**: no claim moves between holding in most cells and in few (by perplexity), and the " \
           "dense accuracy clears the best constant answer as clearly here as there." in same


def test_compare_with_needs_both_paths(tmp_path: Path) -> None:
    base = {"name": "t", "models": {"smollm2-135m": {"layer": [2]}}, "methods": {"layer": ["shortgpt"]}}
    spec = parse_spec(base | {"compare_with": {"report": "docs/RESULTS.md", "spec": "x.yaml"}})
    assert spec.compare_with == ("docs/RESULTS.md", "x.yaml")
    with pytest.raises(StudySpecError, match="compare_with"):
        parse_spec(base | {"compare_with": {"report": "docs/RESULTS.md"}})
    from blockprune.study.report import contrast_lines

    missing = parse_spec(base | {"compare_with": {"report": str(tmp_path / "NONE.md"), "spec": "x.yaml"}})
    assert "Not available here" in "\n".join(contrast_lines(_study("m", True, 0.6, 50), missing))


def test_a_partial_other_study_is_said_to_be_partial(tmp_path: Path) -> None:
    """While the compared study is still being regenerated (new readings added), its column counts fewer cells:
    the section says so, with its coverage, instead of passing the counts off as final."""
    import json

    import yaml

    from blockprune.study.record import export
    from blockprune.study.report import contrast_lines

    other = {"name": "o", "models": {"small": {"layer": [2]}}, "methods": {"layer": ["shortgpt", "entrodrop"]},
             "calibration": {"corpora": ["a"], "seeds": [0]}, "evaluation": {"corpora": CORPORA, "tasks": {}}}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(other))
    (tmp_path / "o").mkdir()
    runs = [r for r in _runs("small", True, 0.6, 50) if not (r.kind == "selection" and "entrodrop" in r.key)]
    (tmp_path / "o" / "runs.json").write_text(json.dumps({"runs": export(runs)}))
    here = parse_spec({"name": "t", "models": {"large": {"layer": [2]}}, "methods": {"layer": ["shortgpt"]},
                       "compare_with": {"report": str(tmp_path / "O.md"), "spec": str(tmp_path / "o.yaml")}})
    text = "\n".join(contrast_lines(_study("large", True, 0.75, 400), here))
    assert f"{tmp_path / 'O.md'} is partial (1 of 2 selections, perplexity for 1 of 1 plans" in text
