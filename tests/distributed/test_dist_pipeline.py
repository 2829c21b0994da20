"""The Ray path on a real local cluster (2 CPUs) reproduces the single-process path on smollm2-135m."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from dist_helpers import TRIALS, tiny_job, with_trials

from blockprune.calibration.store import ActivationStore
from blockprune.distributed.backend import DistributedSettings, run_distributed_job
from blockprune.distributed.model_actor import ActorPlacement
from blockprune.distributed.scoring import BoundaryRefs, RayScoring, ScoringOptions, inspect_transport
from blockprune.pipeline.config import TrialSpec
from blockprune.tracking.tracker import Tracker

pytestmark = pytest.mark.integration

DATA_PARALLEL = DistributedSettings(ActorPlacement(num_cpus=0.5, replicas=2), ScoringOptions(num_cpus=1))


def _assert_same_store(store: ActivationStore, ref: ActivationStore) -> None:
    assert np.array_equal(store.positions(), ref.positions())
    assert np.array_equal(store.token_ids(), ref.token_ids())
    assert set(store.manifest["checksums"]) == set(ref.manifest["checksums"])
    for name in ref.manifest["checksums"]:
        a, b = ref.array(name), store.array(name)
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()), err_msg=name)
    for g, s in ref.stats.items():
        assert store.stats[g]["counts"] == s["counts"]
        for k, v in s["sums"].items():
            np.testing.assert_allclose(store.stats[g]["sums"][k], v, rtol=1e-6, err_msg=f"{g}.{k}")
        np.testing.assert_allclose(store.stats[g]["bi"], s["bi"], rtol=1e-6, atol=1e-9)


def test_data_parallel_ray_job_equals_single_process(ray_local, reference, dist_store_root, tmp_path) -> None:
    """2 CPU replicas capture half the windows each; store, statistics and plans equal one process."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "dist-test")
    out = run_distributed_job(tiny_job(dist_store_root), tracker, DATA_PARALLEL, echo=print, job_name="dp")
    assert out.status == "SUCCEEDED" and out.store_reused is False and out.num_gpus == 0
    store = ActivationStore.open(out.store_path, verify=True)
    assert store.manifest["capture_parts"] == [[0, 1], [2, 3]]  # two replicas, whole batches each
    _assert_same_store(store, reference.store)

    assert [r.trial.name for r in out.results] == [t.name for t in TRIALS]
    for r in out.results:
        ref = reference.plans[r.trial.name]
        assert r.plan.blocks == ref.blocks, r.trial.name
        for key, values in ref.scores.items():
            np.testing.assert_allclose(r.plan.scores[key], values, rtol=1e-4, atol=1e-6, err_msg=key)
    fbs = next(r for r in out.results if r.trial.method == "mi_fbs")
    # central selection: one fan-out (round trip) per batch FBS asked for, each of them with new runs,
    # plus one for EntroDrop's boundary entropies
    assert out.round_trips == fbs.plan.info["score_calls"] + 1 and fbs.plan.info["score_calls"] >= 2
    assert fbs.metrics["scores_computed"] == fbs.plan.info["evaluations"]

    import mlflow

    mlflow.set_tracking_uri(tracker.tracking_uri)
    runs = mlflow.search_runs(experiment_names=["dist-test"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("blockprune.kind") == "job"]
    children = [r for r in runs if r.data.tags.get("blockprune.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    assert parents[0].data.tags["engine.job_id"] and parents[0].data.tags["store_reused"] == "False"
    assert parents[0].data.tags["blockprune.engine"] == "ray"
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)


def test_rerun_reuses_store_and_cached_scores(ray_local, reference, dist_store_root, caplog) -> None:
    """A finished job run again: no recapture, no scoring task, same plans."""
    caplog.set_level(logging.INFO, logger="blockprune")
    out = run_distributed_job(tiny_job(dist_store_root), None, DATA_PARALLEL, echo=print)
    assert out.store_reused is True and out.capture_seconds == 0.0
    assert out.scoring_tasks == 0, "every exact score must come from the cache"
    assert "reusing activation store" in caplog.text and "no recapture" in caplog.text
    for r in out.results:
        assert r.plan.blocks == reference.plans[r.trial.name].blocks


def test_crashed_job_resumes_from_cached_scores_with_colocated_scorers(ray_local, reference,
                                                                       dist_store_root) -> None:
    """A job that died after scoring some runs: the rerun computes only the missing ones.

    Also runs the evaluation actor and its scorer bundle in one STRICT_PACK placement group.
    """
    from blockprune.pipeline.scoring import score_and_select

    job = with_trials(tiny_job(dist_store_root), TrialSpec("mi_fbs", 3, estimator="mi.ksg",
                                                           estimator_params={"k": 4}))
    store = ActivationStore.open(Path(dist_store_root) / Path(reference.store.path).name)
    crashed = RayScoring(ScoringOptions(num_cpus=1)).run_scorer(store, "mi.ksg", {"k": 4}, "layer")
    crashed.score_runs([(i,) for i in range(10)])  # the first job got this far
    assert crashed.tasks == 10

    colocated = DistributedSettings(ActorPlacement(num_cpus=0.5, colocate=True, scorer_slots=1),
                                    ScoringOptions(num_cpus=1))
    out = run_distributed_job(job, None, colocated, echo=print)
    (r,) = out.results
    assert out.store_reused is True
    assert r.metrics["scores_computed"] == r.plan.info["evaluations"] - 10
    sel = score_and_select(reference.store, job.trials[0])  # single process, its own cache
    assert r.plan.blocks == sel.blocks


def test_boundaries_go_to_the_object_store_once_and_are_read_zero_copy(ray_local, reference) -> None:
    refs = BoundaryRefs(reference.store)
    seen = inspect_transport(refs, "h_003")
    assert seen["writeable"] is False and seen["owndata"] is False, seen  # a view of shared memory
    assert seen["shape"] == list(reference.store.h(3).shape)
    first = refs.bytes_put
    refs.refs(["h_003", "h_003"])
    assert refs.bytes_put == first and len(refs) == 1


def test_scoring_fan_out_matches_score_one_and_bounds_in_flight(ray_local, reference) -> None:
    from blockprune.calibration.scoring import score_one

    scorer = RayScoring(ScoringOptions(num_cpus=1, max_in_flight=1)).run_scorer(
        reference.store, "mi.ksg", {"k": 5}, "layer")
    scorer.cache = None  # compute everything through tasks
    runs = [(0,), (3, 4), (10, 11, 12), (29,)]
    got = scorer.score_runs(runs)
    want = [score_one(reference.store, "mi.ksg", {"k": 5}, r) for r in runs]
    assert got == want  # same function on the same arrays: identical, not just close
    assert scorer.round_trips == 1 and scorer.tasks == 4 and scorer.max_in_flight == 1


def test_gpu_request_larger_than_any_node_fails_fast(ray_local, dist_store_root) -> None:
    import time

    from blockprune.distributed.cluster import InsufficientResourcesError

    bad = DistributedSettings(replace(DATA_PARALLEL.placement, num_gpus=2))
    t0 = time.perf_counter()
    with pytest.raises(InsufficientResourcesError, match=r"needs 2 GPU\(s\) on one node, but the largest node has 0"):
        run_distributed_job(tiny_job(dist_store_root), None, bad, echo=print)
    assert time.perf_counter() - t0 < 30
