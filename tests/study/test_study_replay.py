"""A study with ``replay_dense_prefix`` logs exactly the numbers of one without it, replays the unchanged
layers of its plans, and records once more (checked against the logged dense run) when the grid grows
after the dense model was evaluated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from blockprune.evaluation.cpu_features import cpu_label
from blockprune.jobs.study import main
from blockprune.study.record import StudyLog
from blockprune.study.spec import load_spec

pytestmark = pytest.mark.slow


def _spec(tmp: Path, n_layer: list[int], replay: bool) -> Path:
    d: dict[str, Any] = {
        "name": "replay", "models": {"smollm2-135m": {"layer": n_layer}},
        "calibration": {"corpora": ["wikipedia"], "seeds": [0], "n_samples": 4, "seq_len": 64},
        "capture": {"sample_rows": 128, "store_dtype": "float32", "batch_size": 4},
        "methods": {"layer": ["shortgpt", "sequential"]},
        "evaluation": {"corpora": ["wikipedia", "lee-news"], "windows": 2, "seq_len": 64, "batch_size": 4,
                       "tasks": {"arc_easy": 6}, "lm_eval_scope": "reference", "replay_dense_prefix": replay},
        "tracking": {"experiment": "replay-study"}, "store_root": str(tmp / "stores"),
    }
    path = tmp / f"replay-{'-'.join(map(str, n_layer))}-{replay}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _evaluations(spec_path: Path, uri: str) -> dict[str, dict[str, float]]:
    spec = load_spec(spec_path)
    return {r.key: r.metrics for r in StudyLog(uri, spec.experiment, spec.name, spec.fingerprint).runs()
            if r.kind == "evaluation"}


def _run(spec: Path, uri: str, tmp: Path) -> None:
    assert main(["--spec", str(spec), "--tracking-uri", uri, "--out", str(tmp / "docs" / "R.md")]) == 0


def test_replayed_study_logs_the_same_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("BLOCKPRUNE_CACHE", str(tmp_path / "cache"))
    with_replay, without = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    assert load_spec(_spec(tmp_path, [2], True)).fingerprint == load_spec(_spec(tmp_path, [2], False)).fingerprint

    _run(_spec(tmp_path, [2], True), with_replay, tmp_path)  # the dense pass records, the plans replay
    _run(_spec(tmp_path, [2, 4], True), with_replay, tmp_path)  # dense done: one recording pass, then replay
    printed = capsys.readouterr().out
    assert printed.count("recorded the dense hidden states") == 2  # perplexity and lm-eval, second piece
    assert "numbers equal the logged run's" in printed and "differ" not in printed
    report = (tmp_path / "docs" / "R.md").read_text()  # before the run without replay rewrites it
    _run(_spec(tmp_path, [2, 4], False), without, tmp_path)

    got, want = _evaluations(_spec(tmp_path, [2, 4], True), with_replay), _evaluations(_spec(tmp_path, [2, 4], False), without)
    assert set(got) == set(want) and len(got) >= 5
    numbers = [m for m in next(iter(want.values())) if m.startswith(("ppl.", "arc_easy."))]
    assert "ppl.wikipedia" in numbers and "arc_easy.acc" in numbers
    for key in want:
        for m in numbers:
            if m in want[key]:
                assert got[key][m] == want[key][m], (key, m)
    replayed = {k: v["ppl_replayed_layers"] for k, v in got.items() if "ppl_replayed_layers" in v}
    assert len(replayed) == len(got) - 1  # every plan: recorded right before its first removed layer
    assert all(n == min(int(b) for b in k.rsplit("|", 1)[1].split(",")) for k, n in replayed.items())
    assert max(replayed.values()) > 1
    assert any(v.get("lm_eval_replayed_layers", 0) > 0 for v in got.values())
    assert all(v.get("ppl_replay_misses", 0) == 0 and v.get("lm_eval_replay_misses", 0) == 0 for v in got.values())
    assert got["smollm2-135m|dense"]["ppl_recorded_files"] > 0
    spec = load_spec(_spec(tmp_path, [2, 4], True))
    dense = StudyLog(with_replay, spec.experiment, spec.name, spec.fingerprint).by_key("evaluation")["smollm2-135m|dense"]
    for stage in ("ppl", "lm_eval"):  # the second piece's recording passes rechecked the dense run
        assert dense.tags[f"recheck.{stage}"] == f"equal (recomputed on {cpu_label()})"
    assert f"Dense recheck of lm_eval for `smollm2-135m|dense` (run `{dense.run_id[:8]}`): equal (recomputed on" in report
    assert not any("replayed" in m for v in want.values() for m in v)


def test_a_differing_dense_recomputation_says_by_how_much() -> None:
    """Another machine moves the dense perplexity by float rounding (lee-news 36.0699932 logged, 36.0699986
    recomputed on the next machine); the message gives the size, so rounding reads differently from a change."""
    from blockprune.study.replay import differing_metrics

    logged = {"ppl.a": 36.069993189588786, "ppl.b": 50.0, "ppl_seconds": 40.0}
    fresh = {"ppl.a": 36.069998585514846, "ppl.b": 50.0, "ppl_seconds": 12.0, "ppl.c": 3.0}
    assert differing_metrics(logged, fresh) == ["ppl.a (relative 1.5e-07)"]  # timings and new metrics: not compared
    assert differing_metrics({"ppl.a": 10.0}, {"ppl.a": 11.0}) == ["ppl.a (relative 1.0e-01)"]
