"""Against a real ``mlflow server`` on 127.0.0.1 (started and stopped by the fixture)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tracking_helpers import THREE_TRIALS, Server, assert_job_logged, log_job

from blockprune.jobs import compare
from blockprune.tracking.tracker import Tracker

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_three_trial_job_through_a_server_then_compare(mlflow_server: Server, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    tracker = Tracker(mlflow_server.url, "server-job")
    t0 = time.perf_counter()
    tracker.check()
    assert time.perf_counter() - t0 < 5
    parent_id, results = log_job(tracker, THREE_TRIALS)
    assert parent_id is not None
    assert_job_logged(mlflow_server.url, "server-job", parent_id, results, tmp_path)
    # Artifacts went through the server's proxy into its artifact destination, not to a client path.
    assert list((mlflow_server.root / "artifacts").rglob("plan.json"))
    out = tmp_path / "report"
    rc = compare.main(["--tracking-uri", mlflow_server.url, "--experiment", "server-job", "--parent-run", "latest",
                       "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    for r in results:
        assert f"{r.metrics['ppl_pruned']:.3f}" in printed
    assert (out / "compare.html").stat().st_size > 10_000 and (out / "compare.md").exists()
