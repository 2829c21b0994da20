"""Faults in the middle of a real ``blockprune calibrate`` run (smollm2-135m, tiny calibration), through the CLI:
the tracking store deleted after capture, SIGTERM and SIGKILL during capture. Real processes, real signals.

- tracking deleted: the job finishes; every plan, ``--plan-out`` and ``results.json`` are on disk; one
  WARNING line says tracking failed, the last line names the results folder; exit 2, no traceback;
- SIGTERM during capture: exit 143, one line, the partial store folder removed, the MLflow run KILLED with
  the reason;
- SIGKILL during capture: the partial folder and a RUNNING run are left behind (nothing can run); the next
  run of the same job removes the one and marks the other KILLED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = ["--corpus", "lee-news", "--n-samples", "4", "--seq-len", "64", "--sample-rows", "128", "--eval-windows", "2",
         "--quiet"]
# a capture long enough (several seconds) to be interrupted in the middle
LONGER = ["--corpus", "wikipedia", "--n-samples", "24", "--seq-len", "256", "--sample-rows", "4096", "--eval-windows",
          "1", "--batch-size", "2", "--quiet"]


def _cmd(tmp: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "blockprune.jobs.cli", "calibrate", "--model", "smollm2-135m",
            "--store-root", str(tmp / "stores"), "--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}",
            "--results-dir", str(tmp / "results"), *args]


def _popen(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _runs(tmp: Path) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name("blockprune")
    return client.search_runs([exp.experiment_id])


def _wait_for_partial(proc: subprocess.Popen, stores: Path, timeout: float = 240) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        found = list(stores.glob("*.partial-*")) if stores.exists() else []
        if found and list(found[0].glob("h_*.npy")):
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the capture never started")


def test_tracking_store_deleted_after_capture_keeps_every_result(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    plan_out = tmp_path / "plan.json"
    proc = _popen(_cmd(tmp_path, *SMALL, "--method", "shortgpt", "--method", "entrodrop", "--prune", "4",
                       "--plan-out", str(plan_out)), tmp_path)
    seen = []
    for line in proc.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if "activation store captured" in line:
            proc.send_signal(signal.SIGSTOP)  # hold it while the store goes away
            db.unlink()
            proc.send_signal(signal.SIGCONT)
            break
    rest, err = proc.communicate(timeout=600)
    out = "".join(seen) + rest
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2, (out[-3000:], err[-3000:])
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 2, lines
    assert "WARNING" in lines[0] and "MLflow tracking failed" in lines[0] and "without tracking" in lines[0]
    assert lines[1].startswith("blockprune: error: MLflow tracking failed mid-job") and str(tmp_path / "results") \
        in lines[1]
    trials = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    assert [t["trial"] for t in trials] == ["shortgpt/layer/k=4", "entrodrop/entropy.knn_window/layer/k=4"]

    from blockprune.selection.plan import PrunePlan

    assert list(PrunePlan.load(plan_out).blocks) == trials[0]["blocks"]
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["status"] == "finished" and "log_" in results["tracking_failure"]
    assert [t["blocks"] for t in results["trials"]] == [t["blocks"] for t in trials]
    for t in results["trials"]:
        assert t["metrics"]["ppl_pruned"] > t["metrics"]["ppl_dense"] > 1
        assert PrunePlan.load(t["plan"]).blocks == tuple(t["blocks"])


def test_sigterm_during_capture_removes_the_partial_store_and_ends_the_run_killed(tmp_path: Path) -> None:
    proc = _popen(_cmd(tmp_path, *LONGER, "--method", "shortgpt", "--prune", "4"), tmp_path)
    partial = _wait_for_partial(proc, tmp_path / "stores")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 128 + signal.SIGTERM, (out[-2000:], err[-3000:])
    assert lines == ["blockprune: stopped by SIGTERM"], lines
    assert not partial.exists() and not list((tmp_path / "stores").glob("*.partial-*"))
    assert not list((tmp_path / "stores").glob("*/manifest.json"))
    (run,) = _runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["blockprune.end_reason"] == "interrupted by SIGTERM"
    assert json.loads((tmp_path / "results" / "results.json").read_text())["status"] == "interrupted"


def test_sigkill_during_capture_is_cleaned_up_by_the_next_run_of_the_job(tmp_path: Path) -> None:
    cmd = _cmd(tmp_path, *LONGER, "--method", "shortgpt", "--prune", "4")
    proc = _popen(cmd, tmp_path)
    partial = _wait_for_partial(proc, tmp_path / "stores")
    proc.kill()
    proc.communicate(timeout=60)
    assert partial.exists(), "SIGKILL leaves the partial folder (nothing can run)"
    (dead,) = _runs(tmp_path)
    assert dead.info.status == "RUNNING"

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not list((tmp_path / "stores").glob("*.partial-*")), "the next capture of the store removes it"
    runs = {r.info.run_id: r for r in _runs(tmp_path)}
    old = runs[dead.info.run_id]
    assert old.info.status == "KILLED" and f"process {proc.pid} " in old.data.tags["blockprune.end_reason"]
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "FINISHED", "KILLED"]  # new job + trial
