"""The Ray backend goes through the same reuse-or-capture path as the local one: a corrupt store is captured
again by the model actors, and a float16 capture that overflows in an actor is repeated in float32."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from dist_helpers import tiny_job, with_trials

from blockprune.calibration.settings import CaptureSettings
from blockprune.calibration.store import ActivationStore
from blockprune.distributed.backend import DistributedSettings, run_distributed_job
from blockprune.distributed.model_actor import ActorPlacement
from blockprune.distributed.scoring import ScoringOptions
from blockprune.pipeline.config import TrialSpec
from blockprune.selection.plan import CalibrationSettings
from blockprune.tracking.tracker import Tracker

pytestmark = pytest.mark.integration

ONE_ACTOR = DistributedSettings(ActorPlacement(num_cpus=0.5), ScoringOptions(num_cpus=1))


def _overwrite_middle(f: Path, n: int = 64 * 1024) -> None:
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(n)
    f.write_bytes(bytes(data))


def _parent_tags(tracker: Tracker) -> list[dict[str, str]]:
    import mlflow

    client = mlflow.MlflowClient(tracker.tracking_uri)
    exp = client.get_experiment_by_name(tracker.experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    return [r.data.tags for r in runs if r.data.tags.get("blockprune.kind") == "job"]


def test_ray_backend_captures_a_corrupt_store_again(ray_local, tmp_path) -> None:
    job = with_trials(tiny_job(tmp_path / "stores"), TrialSpec("shortgpt", 4))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "ray-corrupt")
    first = run_distributed_job(job, tracker, ONE_ACTOR, echo=print)
    assert first.store_reused is False
    _overwrite_middle(Path(first.store_path) / "h_004.npy")

    second = run_distributed_job(job, tracker, ONE_ACTOR, echo=print)
    assert second.store_reused is False, "the Ray path must not reuse a store that fails its checksums"
    store = ActivationStore.open(second.store_path, verify=True)
    assert (Path(second.store_path).parent / (Path(second.store_path).name + ".corrupt")).is_dir()
    tags = _parent_tags(tracker)
    assert "store_replaced_corrupt" not in tags[0] and "h_004.npy" in tags[1]["store_replaced_corrupt"]
    assert [r.plan.blocks for r in second.results] == [r.plan.blocks for r in first.results]
    assert store.checksum == ActivationStore.open(first.store_path).checksum  # recaptured bit-identical

    third = run_distributed_job(job, None, ONE_ACTOR, echo=print)
    assert third.store_reused is True


@pytest.mark.slow  # gemma3-270m in an actor: ~1 min on 2 cores
def test_float16_overflow_in_an_actor_is_captured_again_in_float32(ray_local, tmp_path) -> None:
    """gemma3-270m on LAMBADA: activations at h_010 pass 65504 (the README's second example)."""
    job = replace(tiny_job(tmp_path / "stores"), model="gemma3-270m",
                  calibration=CalibrationSettings("lambada", 4, 256, 0), trials=(TrialSpec("shortgpt", 3),),
                  capture=CaptureSettings(sample_rows=2048, store_dtype="float16", batch_size=2))
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "ray-fallback")
    out = run_distributed_job(job, tracker, ONE_ACTOR, echo=print)
    store = ActivationStore.open(out.store_path, verify=True)
    assert store.h(10).dtype == np.float32 and store.manifest["settings"]["store_dtype"] == "float32"
    assert store.manifest["store_dtype_requested"] == "float16"
    assert np.abs(store.h(10)).max() > np.finfo(np.float16).max
    (tags,) = _parent_tags(tracker)
    assert tags["store_dtype"] == "float32" and "h_010" in tags["store_dtype_fallback"]
    again = run_distributed_job(job, None, ONE_ACTOR, echo=print)
    assert again.store_reused is True and again.store_path == out.store_path
