"""Fixtures of the Ray tests: a single-process reference, a shared store root, a local cluster.

Every Ray cluster here is real (``ray.init(num_cpus=2)``, ``ray.cluster_utils.Cluster``,
``ray start``). Ray binds beyond loopback on the host network, so these tests refuse to start a
cluster outside a private network namespace: run them with
``bash scripts/in-netns.sh .venv/bin/python -m pytest tests/distributed`` (``make test`` does).
``BLOCKPRUNE_ALLOW_HOST_NETWORK=1`` overrides that, at your own risk.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dist_helpers import Reference, require_private_netns, tiny_job


@pytest.fixture(scope="session")
def dist_store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stores captured through Ray (shared by the tests of this session: capture once, reuse)."""
    return tmp_path_factory.mktemp("ray-stores")


@pytest.fixture(scope="session")
def reference(smollm2: Any, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Capture and select in this process, exactly as ``blockprune calibrate`` does."""
    from blockprune.pipeline.prepare import capture_or_reuse, prepare
    from blockprune.pipeline.scoring import score_and_select

    job = tiny_job(tmp_path_factory.mktemp("single-process-stores"))
    p = prepare(job)
    store, _ = capture_or_reuse(p, smollm2.model, progress=False)
    plans = {}
    for t in job.trials:
        plans[t.name] = score_and_select(store, t).to_plan(t, store, model_id=p.resolved.name,
                                                           revision=p.resolved.revision, n_blocks=p.n_layers,
                                                           calibration=p.job.calibration)
    return Reference(job, store, plans)


@pytest.fixture(scope="module")
def ray_temp_dir() -> Iterator[str]:
    """A private Ray temp dir (short: socket paths are length-limited), removed afterwards."""
    path = tempfile.mkdtemp(prefix="bpray-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_local(ray_temp_dir: str) -> Iterator[Any]:
    """A real local Ray cluster with 2 CPUs for one test module, stopped afterwards."""
    require_private_netns()
    import ray

    from blockprune.distributed.cluster import connect

    if ray.is_initialized():
        ray.shutdown()
    info = connect(num_cpus=2, _temp_dir=ray_temp_dir)
    try:
        yield info
    finally:
        ray.shutdown()
