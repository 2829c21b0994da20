"""The Ray model actor runs a job layer-streamed (no weights held): same store, plans and perplexity as the
single-process reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from dist_helpers import tiny_job, with_trials

from blockprune.calibration.store import ActivationStore
from blockprune.distributed.backend import run_distributed_job
from blockprune.pipeline.config import ActorPlacement, DistributedSettings, ScoringOptions, TrialSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_streamed_actor_reproduces_the_reference(ray_local, reference, tmp_path) -> None:
    job = replace(with_trials(tiny_job(tmp_path / "stores"), TrialSpec("shortgpt", 4)), streamed=True)
    settings = DistributedSettings(ActorPlacement(num_cpus=0.5, replicas=2), ScoringOptions(num_cpus=1))
    out = run_distributed_job(job, None, settings, echo=print)
    assert out.status == "SUCCEEDED" and out.store_reused is False and out.num_gpus == 0
    store = ActivationStore.open(out.store_path)
    assert store.manifest["capture_path"] == "streamed"
    assert np.array_equal(store.positions(), reference.store.positions())
    for name in ("h_000", "h_015", "h_030", "m_007"):
        ref = reference.store.array(name)
        np.testing.assert_allclose(store.array(name), ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    (r,) = out.results
    assert r.plan.blocks == reference.plans["shortgpt/layer/k=4"].blocks
    assert r.metrics["ppl_pruned"] > r.metrics["ppl_dense"] > 1
