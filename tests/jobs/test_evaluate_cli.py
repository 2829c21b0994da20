"""``blockprune evaluate`` on real weights."""

from __future__ import annotations

import json

import pytest

from blockprune.jobs.evaluate import main
from blockprune.selection.plan import PrunePlan

pytestmark = pytest.mark.integration

SMALL = ["--corpus", "lee-news", "--seq-len", "64", "--eval-windows", "2", "--no-tracking", "--quiet"]
ROLLING = ["--rolling-docs", "2"]


def test_plan_for_another_model_is_refused(tmp_path, capsys) -> None:
    PrunePlan(model_id="gemma3-270m", n_blocks=18, blocks=(3,)).save(tmp_path / "p.json")
    assert main(["--model", "smollm2-135m", "--plan", str(tmp_path / "p.json"), *SMALL]) == 2
    assert "gemma3-270m" in capsys.readouterr().err


def test_dense_and_planned_table(tmp_path, capsys) -> None:
    plan = PrunePlan(model_id="smollm2-135m", n_blocks=30, blocks=(12, 13, 14, 15, 16, 17, 18, 19))
    plan.save(tmp_path / "p.json")
    out_json = tmp_path / "r.json"
    assert main(["--model", "smollm2-135m", "--plan", str(tmp_path / "p.json"), "--json-out", str(out_json),
                 *SMALL, *ROLLING]) == 0
    text = capsys.readouterr().out
    assert "ppl" in text and "params_total" in text and "perplexity ×" in text
    rows = json.loads(out_json.read_text())
    dense, pruned = rows["dense"], next(v for k, v in rows.items() if k.startswith("pruned"))
    assert pruned["ppl"] > dense["ppl"] > 1
    assert pruned["rolling.word_perplexity"] > dense["rolling.word_perplexity"] > 1  # named apart from chunk ppl
    layer_params = (134_515_008 - 120_354_624) // 4  # one SmolLM2 decoder layer, measured independently
    assert dense["params_total"] - pruned["params_total"] == 8 * layer_params
