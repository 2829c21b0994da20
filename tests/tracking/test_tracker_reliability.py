"""The tracker under real faults: concurrent creation of one sqlite store, a read-only folder, the store
deleted mid-run, a job killed by SIGTERM or SIGKILL. Real processes, real signals, real sqlite."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from blockprune.tracking.tracker import Tracker, TrackingUnavailableError

pytestmark = pytest.mark.integration

CREATE = textwrap.dedent("""
    import sys, time
    from blockprune.tracking.tracker import Tracker
    db, start = sys.argv[1], float(sys.argv[2])
    while time.time() < start:  # both processes open the fresh store at the same moment
        time.sleep(0.001)
    t = Tracker(f"sqlite:///{db}", "race")
    t.check()
    with t.run(f"run-{sys.argv[3]}"):
        t.log_metrics({"x": 1.0})
    print("ok")
""")


@pytest.mark.slow  # three repetitions of two interpreters importing mlflow: ~45 s on 2 cores
def test_two_processes_creating_one_fresh_sqlite_store_both_succeed(tmp_path: Path) -> None:
    """Before: one of them failed 3 of 3 times (duplicate column name / online migration mismatch)."""
    script = tmp_path / "create.py"
    script.write_text(CREATE)
    for rep in range(3):
        db = tmp_path / f"rep{rep}" / "mlflow.db"
        db.parent.mkdir()
        start = time.time() + 6  # after both interpreters imported mlflow
        procs = [subprocess.Popen([sys.executable, str(script), str(db), str(start), str(i)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        outs = [p.communicate(timeout=180) for p in procs]
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0 and out.strip() == "ok", f"repetition {rep}: {err[-1500:]}"
        import mlflow

        runs = mlflow.MlflowClient(f"sqlite:///{db}").search_runs(
            [mlflow.MlflowClient(f"sqlite:///{db}").get_experiment_by_name("race").experiment_id])
        assert sorted(r.info.run_name for r in runs) == ["run-0", "run-1"]


def test_read_only_tracking_folder_fails_in_seconds(tmp_path: Path, mounts) -> None:
    """Before: MLflow retried for ~109 s before the job learnt the store was unusable."""
    folder = tmp_path / "ro"
    folder.mkdir()
    code = ("import sys, time; from blockprune.tracking.tracker import Tracker\n"
            "t0 = time.perf_counter()\n"
            "try:\n    Tracker(sys.argv[1]).check()\nexcept Exception as e:\n"
            "    print(f'{time.perf_counter() - t0:.2f}', type(e).__name__, e)\n")
    done = subprocess.run(mounts([sys.executable, "-c", code, f"sqlite:///{folder}/mlflow.db"], readonly=[str(folder)]),
                          capture_output=True, text=True, timeout=120)
    seconds, kind, message = done.stdout.split(" ", 2)
    print(f"read-only tracking folder refused after {seconds} s")
    assert kind == "TrackingUnavailableError" and str(folder) in message and "not writable" in message
    assert float(seconds) < 10


def test_read_only_database_file_is_found_by_the_check(tmp_path: Path, mounts) -> None:
    db = tmp_path / "mlflow.db"
    Tracker(f"sqlite:///{db}").check()  # a real, complete store
    code = ("import sys; from blockprune.tracking.tracker import Tracker\n"
            "try:\n    Tracker(sys.argv[1]).check()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    done = subprocess.run(mounts([sys.executable, "-c", code, f"sqlite:///{db}"], readonly=[str(db)]),
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("TrackingUnavailableError") and f"{db} is not writable" in done.stdout


def test_store_deleted_mid_run_turns_tracking_off_with_one_warning(tmp_path: Path, caplog) -> None:
    db = tmp_path / "mlflow.db"
    t = Tracker(f"sqlite:///{db}", "gone")
    t.check()
    with caplog.at_level(logging.WARNING), t.run("job", params={"a": 1}) as parent:
        assert parent is not None
        t.log_metrics({"before": 1.0})
        db.unlink()
        t.log_metrics({"after": 2.0})  # must not raise
        with t.run("trial", nested=True) as child:
            t.log_metrics({"x": 3.0})
            t.set_tags({"k": "v"})
            assert child is None  # tracking is off now
    assert t.failure is not None and "log_metrics" in t.failure
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "goes on without tracking" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()
    import mlflow

    assert mlflow.active_run() is None, "no run of the failed tracker may stay on MLflow's run stack"
    assert t.describe(parent).startswith("tracking failed")


RUN = textwrap.dedent("""
    import argparse, sys, time
    from blockprune.jobs.entry import run_entry
    from blockprune.tracking.tracker import Tracker

    def run(args):
        t = Tracker(args.uri, "kill")
        with t.run("job", job_key=args.key) as rid:
            with t.run("trial", nested=True):
                print(rid, flush=True)
                time.sleep(120)
        return 0

    p = argparse.ArgumentParser()
    p.add_argument("uri")
    p.add_argument("key")
    sys.exit(run_entry(run, p.parse_args()))
""")


def _start(tmp_path: Path, uri: str, key: str) -> tuple[subprocess.Popen, str]:
    script = tmp_path / "job.py"
    script.write_text(RUN)
    proc = subprocess.Popen([sys.executable, str(script), uri, key], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.stderr.read()
    return proc, run_id


def _runs(uri: str) -> dict[str, tuple[str, dict[str, str]]]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("kill")
    return {r.info.run_name: (r.info.status, r.data.tags) for r in client.search_runs([exp.experiment_id])}


def test_sigterm_ends_the_runs_killed_with_the_reason(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc, _ = _start(tmp_path, uri, "job-a")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert err.strip().splitlines()[-1] == "blockprune: stopped by SIGTERM" and "Traceback" not in err
    runs = _runs(uri)
    for name in ("job", "trial"):
        status, tags = runs[name]
        assert status == "KILLED" and tags["blockprune.end_reason"] == "interrupted by SIGTERM", (name, status, tags)


def test_a_run_left_running_by_a_killed_process_is_marked_killed_by_the_next_run_of_the_job(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc, dead_id = _start(tmp_path, uri, "job-b")
    os.kill(proc.pid, signal.SIGKILL)  # no handler runs: the runs stay RUNNING
    proc.communicate(timeout=60)
    assert {s for s, _ in _runs(uri).values()} == {"RUNNING"}

    other = Tracker(uri, "kill")
    with other.run("another job", job_key="job-c"):
        pass
    assert _runs(uri)["job"][0] == "RUNNING", "a different job must not touch it"

    again = Tracker(uri, "kill")
    with again.run("job again", job_key="job-b"):
        pass
    runs = _runs(uri)
    for name in ("job", "trial"):
        status, tags = runs[name]
        assert status == "KILLED", (name, status)
        assert f"process {proc.pid}" in tags["blockprune.end_reason"] and again.job_id in tags["blockprune.end_reason"]
    assert runs["job again"][0] == "FINISHED"


def test_a_running_job_of_a_live_process_is_left_alone(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc, _ = _start(tmp_path, uri, "job-d")
    try:
        with Tracker(uri, "kill").run("second copy", job_key="job-d"):
            pass
        assert _runs(uri)["job"][0] == "RUNNING"
    finally:
        proc.kill()
        proc.communicate(timeout=60)


def test_unreachable_store_is_still_refused_before_work(tmp_path: Path) -> None:
    with pytest.raises(TrackingUnavailableError, match="does not exist"):
        Tracker(f"sqlite:///{tmp_path / 'no' / 'mlflow.db'}").check()
