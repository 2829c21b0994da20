"""Faults on a real local cluster: killed model actor, killed scoring worker, crashed capture."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dist_helpers import TRIALS, require_private_netns, tiny_job, with_trials

from blockprune.calibration.store import ActivationStore
from blockprune.distributed.backend import DistributedSettings, run_distributed_job
from blockprune.distributed.model_actor import ActorPlacement
from blockprune.distributed.scoring import RayScoring, ScoringOptions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_faulty(ray_temp_dir: str) -> Iterator[Any]:
    """A local 2-CPU cluster whose workers register the ``test.crash_once`` estimator at start."""
    require_private_netns()
    import dist_faults
    import ray

    from blockprune.distributed.cluster import connect

    dist_faults.setup()
    if ray.is_initialized():
        ray.shutdown()
    here = str(Path(dist_faults.__file__).parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    info = connect(num_cpus=2, _temp_dir=ray_temp_dir,
                   runtime_env={"worker_process_setup_hook": "dist_faults.setup", "env_vars": {"PYTHONPATH": path}})
    try:
        yield info
    finally:
        ray.shutdown()
        dist_faults.teardown()


def test_killed_model_actor_is_restarted_and_the_plan_is_unchanged(ray_faulty, reference, tmp_path) -> None:
    """SIGKILL one of two capture replicas mid-capture: Ray restarts it, the part is redone, and
    store and plans equal the single-process ones. A partial store left by an earlier crash is
    cleared first."""
    from blockprune.pipeline.prepare import prepare, store_path

    root = tmp_path / "stores"
    job = with_trials(tiny_job(root), TRIALS[0], TRIALS[2])
    path = store_path(prepare(job))
    stale = path.parent / f"{path.name}.partial-999999"
    stale.mkdir(parents=True)
    (stale / "h_000.npy").write_bytes(b"half-written by a crashed capture")

    settings = DistributedSettings(ActorPlacement(num_cpus=0.5, replicas=2, max_restarts=2))
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = run_distributed_job(job, None, settings, echo=print)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            box["error"] = e

    worker = threading.Thread(target=run)
    worker.start()
    killed = None
    deadline = time.monotonic() + 300
    while worker.is_alive() and killed is None and time.monotonic() < deadline:
        for f in root.glob("*.partial-*/part-1.attempts"):
            lines = f.read_text().splitlines()
            if lines:
                killed = json.loads(lines[0])["pid"]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.01)
    worker.join(300)
    assert killed is not None, "the capture finished before the test could kill a replica"
    assert "error" not in box, box.get("error")
    out = box["out"]
    assert out.status == "SUCCEEDED"
    store = ActivationStore.open(out.store_path, verify=True)
    assert store.manifest["capture_restarts"] == {"0": 0, "1": 1}
    assert not stale.exists()
    for name in ("h_000", "h_015", "h_030", "m_029"):
        ref = reference.store.array(name)
        np.testing.assert_allclose(store.array(name), ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    for r in out.results:
        assert r.plan.blocks == reference.plans[r.trial.name].blocks, r.trial.name


def test_killed_scoring_worker_is_retried(ray_faulty, reference, tmp_path) -> None:
    """The first attempt of one scoring task kills its worker (SIGKILL); the retry gives the exact score."""
    import ray

    from blockprune.calibration.scoring import score_one

    runs = [(0,), (5, 6), (29,)]
    marker = tmp_path / "crashed"
    scorer = RayScoring(ScoringOptions(num_cpus=1, max_retries=2)).run_scorer(
        reference.store, "test.crash_once", {"marker": str(marker)}, "layer")
    scorer.cache = None
    got = scorer.score_runs(runs)
    assert marker.exists(), "no worker was killed"
    assert got == [score_one(reference.store, "mi.ksg", {}, r) for r in runs]

    no_retry = RayScoring(ScoringOptions(num_cpus=1, max_retries=0)).run_scorer(
        reference.store, "test.crash_once", {"marker": str(tmp_path / "crashed-again")}, "layer")
    no_retry.cache = None
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        no_retry.score_runs(runs)


def test_stale_partial_is_not_mistaken_for_a_store(tmp_path: Path) -> None:
    from blockprune.calibration.store import finished_store

    (tmp_path / "s.partial-1").mkdir()
    assert finished_store(tmp_path / "s") is None
