"""The selection benchmark runs end to end on a couple of seeds and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_selection.py"


def test_benchmark_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_selection", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    result = bench.main(["--seeds", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    by_config = {(r["n_blocks"], r["n_prune"]): r for r in result["summary"]}
    assert by_config[(32, 5)]["brute_evaluations"] == 150
    assert by_config[(40, 10)]["brute_evaluations"] == 355
    for r in result["summary"]:
        assert r["fbs_evaluations_max"] < r["brute_evaluations"] / 3
        assert r["fbs_loss_ratio_mean"] >= 1.0 - 1e-12  # the oracle is a lower bound
    assert "FBS evals" in capsys.readouterr().out
