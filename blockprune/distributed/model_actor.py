"""Model actors: one model on ``k`` GPUs of one node (``k = 0``: CPU), placed by accelerate.

How many GPUs: the weights' size comes from the config alone (parameters counted on the meta
device × bytes per element × an overhead factor for activations and the CUDA context) and is
divided by what each GPU may hold (its memory minus a headroom fraction). Inside the actor
accelerate spreads the layers over the GPUs Ray made visible, never splitting a decoder layer
(the adapter's no-split class), with ``max_memory`` leaving the same headroom.

``torch.cuda`` is touched only inside actors and probe tasks, never in the driver, which may sit
on a CPU-only head node.

Actors are gang-scheduled with a placement group per job: all replicas of a model (and, when
``colocate`` is asked, CPU bundles for its scorers, ``STRICT_PACK`` on one node) are reserved at
once. A job that cannot get its GPUs yet waits in Ray's queue holding nothing, so jobs of a
sweep queue on GPU resources without deadlocking each other.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from blockprune.distributed.cluster import (
    ClusterInfo,
    InsufficientResourcesError,
    check_gpu_request,
    cluster_info,
)
from blockprune.distributed.deepspeed_engine import wrap_inference
from blockprune.env import apply_env_defaults
from blockprune.models.zoo import load_model
from blockprune.pipeline.config import ActorPlacement

log = logging.getLogger(__name__)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ---------------------------------------------------------------------------------------- sizing


def param_count(model_path: str) -> int:
    """Parameters of a model from its config alone (instantiated on the meta device)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # tied embeddings count once, as on the device
    return sum(p.numel() for p in model.parameters())


def model_bytes(n_params: int, dtype: str, overhead: float) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; one of {sorted(DTYPE_BYTES)}")
    return int(math.ceil(n_params * DTYPE_BYTES[dtype] * overhead))


def gpus_needed(need_bytes: int, gpu_bytes: int, headroom: float) -> int:
    """Smallest k with k × usable memory ≥ the model's need (at least 1)."""
    usable = gpu_bytes * (1.0 - headroom)
    if usable <= 0:
        raise ValueError("GPU memory after headroom must be positive")
    return max(1, math.ceil(need_bytes / usable))


def _probe_gpu_memory() -> int:
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory)


def probe_gpu_memory(timeout_s: float = 120.0) -> int:
    """Memory of one GPU in bytes, asked from a 1-GPU task (the driver never touches CUDA)."""
    import ray

    ref = ray.remote(num_gpus=1, num_cpus=0)(_probe_gpu_memory).remote()
    try:
        return int(ray.get(ref, timeout=timeout_s))
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise InsufficientResourcesError(
            f"no GPU became free within {timeout_s:.0f} s to measure GPU memory; set placement.gpu_memory_gb"
        ) from None


def resolve_num_gpus(model_path: str, dtype: str, placement: ActorPlacement, info: ClusterInfo,
                     what: str = "model actor") -> int:
    """GPUs per actor: the configured count (checked against the nodes) or one chosen from the size."""
    if placement.num_gpus is not None:
        check_gpu_request(placement.num_gpus, what, info)
        return int(placement.num_gpus)
    if info.total_gpus == 0:
        return 0
    need = model_bytes(param_count(model_path), dtype, placement.overhead)
    gpu = int(placement.gpu_memory_gb * 2**30) if placement.gpu_memory_gb else probe_gpu_memory()
    k = gpus_needed(need, gpu, placement.headroom)
    log.info("%s: %.2f GiB with overhead, %.1f GiB per GPU (%.0f%% headroom) → %d GPU(s)",
             what, need / 2**30, gpu / 2**30, placement.headroom * 100, k)
    check_gpu_request(k, what, info)
    return k


def max_memory_map(device_bytes: list[int], headroom: float) -> dict[int | str, int]:
    """accelerate ``max_memory``: each visible GPU minus headroom (bytes), no CPU offload."""
    return {i: int(b * (1.0 - headroom)) for i, b in enumerate(device_bytes)}


def device_map_for(model_path: str, dtype: str, max_memory: dict[int | str, int],
                   no_split: list[str]) -> dict[str, Any]:
    """accelerate's device map over the given devices, never splitting a ``no_split`` module."""
    import torch
    from accelerate import infer_auto_device_map, init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    empty.tie_weights()
    dmap = infer_auto_device_map(empty, max_memory=max_memory, no_split_module_classes=no_split,
                                 dtype=getattr(torch, dtype))
    off = sorted({str(d) for d in dmap.values() if d in ("cpu", "disk")})
    if off:
        raise InsufficientResourcesError(
            f"the model does not fit on the actor's GPUs with this headroom (would offload to {off}); "
            "raise num_gpus or lower headroom"
        )
    return dmap


# ------------------------------------------------------------------------------------ the actor


class ModelWorker:
    """Owns one model; Ray wraps it as an actor (``k`` GPUs or CPU), tests use it in-process.

    The worker prepares its job itself (tokeniser, windows), so a restarted actor rebuilds
    exactly the same state from the constructor arguments Ray kept.
    """

    def __init__(self, job: Any, num_gpus: int = 0, engine: str = "accelerate", headroom: float = 0.15,
                 progress: bool = False) -> None:

        apply_env_defaults()
        from blockprune.pipeline.prepare import prepare

        t0 = time.perf_counter()
        self.job = job
        self.progress = progress
        self.p = prepare(job)
        self.engine = engine
        self._ds_engine = None
        self.model = None
        self.device_map = None
        self.streamed_device: str | None = None
        device_map: Any = job.device_map
        streamed = job.streamed
        if num_gpus > 0 and streamed is not True:
            import torch

            n_dev = torch.cuda.device_count()
            if n_dev < num_gpus:
                raise InsufficientResourcesError(f"actor asked for {num_gpus} GPUs but sees {n_dev}")
            mem = [torch.cuda.get_device_properties(i).total_memory for i in range(n_dev)]
            try:
                device_map = device_map_for(self.p.resolved.path, job.dtype, max_memory_map(mem, headroom),
                                            [self.p.adapter.no_split_class])
            except InsufficientResourcesError as e:
                if streamed is False:
                    raise
                log.info("%s: %s; streaming it layer by layer instead", self.p.resolved.name, e)
                streamed = True
        from blockprune.calibration.streamed import choose_capture_path

        device = "cuda:0" if num_gpus > 0 else "cpu"
        if choose_capture_path(self.p.resolved.path, job.dtype, streamed=streamed, device=device).streamed:
            self.streamed_device = device  # no weights held: each layer is read when it runs
        else:
            self.model, _, _ = load_model(job.model, dtype=job.dtype, device_map=device_map)
            self.device_map = getattr(self.model, "hf_device_map", None)
            if engine == "deepspeed":

                self._ds_engine, self.model = wrap_inference(self.model, job.dtype)
        self.load_seconds = time.perf_counter() - t0

    # ------------------------------------------------------------------ info

    def describe(self) -> dict[str, Any]:
        """Where this actor runs and how its model is laid out (for logs and tests)."""
        out: dict[str, Any] = {"pid": os.getpid(), "engine": self.engine, "load_seconds": self.load_seconds,
                               "n_layers": self.p.n_layers, "model": self.p.resolved.name,
                               "streamed": self.streamed_device is not None}
        try:
            import ray

            if ray.is_initialized():
                ctx = ray.get_runtime_context()
                out["node_id"] = ctx.get_node_id()
                out["gpu_ids"] = ctx.get_accelerator_ids().get("GPU", [])
        except Exception:  # noqa: BLE001 - in-process use without Ray
            pass
        if self.device_map:
            out["devices"] = sorted({str(d) for d in self.device_map.values()})
        return out

    # ------------------------------------------------------------------ capture

    def capture_part(self, tmp_dir: str, positions: Any, window_subset: list[int], part: int,
                     store_dtype: str | None = None) -> dict[str, Any]:
        """Forward some windows and write their sampled rows into the shared store files.

        Idempotent: a retried part rewrites the same rows. Returns the raw statistic sums, which
        merge by addition into the single-process result, and whether the part ran layer-streamed.
        ``store_dtype``: the dtype the driver laid the files out in (the job's, or float32 after a
        float16 overflow).
        """
        from blockprune.calibration.capture import run_capture
        from blockprune.distributed.capture import RowWriter, mark_started

        mark_started(Path(tmp_dir), part)
        writer = RowWriter(Path(tmp_dir), store_dtype or self.job.capture.store_dtype)
        try:
            if self.streamed_device is not None:
                from blockprune.calibration.streamed import run_capture_streamed
                from blockprune.models.layer_stream import LayerStream

                with LayerStream(self.p.resolved.path, dtype=self.job.dtype, device=self.streamed_device,
                                 prefetch=self.streamed_device != "cpu") as stream:
                    stats = run_capture_streamed(stream, self.p.windows, positions, self.job.capture, writer,
                                                 window_subset=window_subset, progress=self.progress)
            else:
                stats = run_capture(self.model, self.p.adapter, self.p.windows, positions, self.job.capture, writer,
                                    window_subset=window_subset, progress=self.progress)
        finally:
            writer.close()
        return {g: {"sums": {k: v.tolist() for k, v in s.sums.items()}, "counts": s.counts.tolist()}
                for g, s in stats.items()} | {"_streamed": self.streamed_device is not None}

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, plan: Any | None = None, save_dir: str | None = None) -> Any:
        """The pipeline's :class:`~blockprune.pipeline.evaluate.Evaluation` of the dense model, or of a pruned
        copy when a plan is given (the same function the local backend calls)."""
        from blockprune.pipeline.evaluate import evaluate_plan, measure_streamed

        if self.streamed_device is not None:
            return measure_streamed(self.p, plan, self.streamed_device, self.progress)
        return evaluate_plan(self.model, self.p, plan, save_dir, progress=self.progress)


# ------------------------------------------------------------------------------- actor groups


def placement_bundles(placement: ActorPlacement, num_gpus: int, replicas: int, scorer_cpus: float,
                      with_scorers: bool) -> list[dict[str, float]]:
    bundle: dict[str, float] = {"CPU": float(placement.num_cpus)}
    if num_gpus:
        bundle["GPU"] = float(num_gpus)
    bundles = [dict(bundle) for _ in range(replicas)]
    if with_scorers and placement.colocate:
        bundles += [{"CPU": float(scorer_cpus)} for _ in range(placement.scorer_slots)]
    return [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.001} for b in bundles]


def check_bundles_fit(bundles: list[dict[str, float]], strategy: str, info: ClusterInfo, what: str) -> None:
    """Refuse a placement group no node (STRICT_PACK) or the cluster (PACK) could ever hold."""
    alive = [n for n in info.nodes if n.alive]
    need_cpu = sum(b.get("CPU", 0.0) for b in bundles)
    need_gpu = sum(b.get("GPU", 0.0) for b in bundles)
    if strategy == "STRICT_PACK":
        if not any(n.cpus >= need_cpu and n.gpus >= need_gpu for n in alive):
            raise InsufficientResourcesError(
                f"{what}: STRICT_PACK needs {need_cpu:g} CPUs and {need_gpu:g} GPUs on one node; nodes have "
                + ", ".join(f"{n.address} {n.cpus:g} CPU/{n.gpus:g} GPU" for n in alive)
            )
    else:
        for b in bundles:
            if not any(n.cpus >= b.get("CPU", 0.0) and n.gpus >= b.get("GPU", 0.0) for n in alive):
                raise InsufficientResourcesError(f"{what}: no node can hold the bundle {b}")


class ModelGroup:
    """A placement group and the model actors in it, for one job; ``close()`` releases both."""

    def __init__(self, job: Any, placement: ActorPlacement, num_gpus: int, replicas: int, *,
                 scorer_cpus: float = 1.0, with_scorers: bool = False, info: ClusterInfo | None = None,
                 name: str = "model", progress: bool = False, wait_log_s: float = 30.0) -> None:
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.name = name
        self.replicas = replicas
        self.num_gpus = num_gpus
        self.strategy = "STRICT_PACK" if placement.colocate else "PACK"
        self.bundles = placement_bundles(placement, num_gpus, replicas, scorer_cpus, with_scorers)
        check_bundles_fit(self.bundles, self.strategy, info or cluster_info(), name)
        self.pg = placement_group(self.bundles, strategy=self.strategy, name="")
        self.actors: list[Any] = []
        try:
            t0 = time.monotonic()
            while True:
                ready, _ = ray.wait([self.pg.ready()], timeout=wait_log_s)
                if ready:
                    break
                log.info("%s: waiting for resources %s (%.0f s so far)", name, self.bundles, time.monotonic() - t0)
            cls = ray.remote(ModelWorker)
            for i in range(replicas):
                strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i)
                self.actors.append(
                    cls.options(num_cpus=placement.num_cpus, num_gpus=num_gpus, max_restarts=placement.max_restarts,
                                max_task_retries=placement.max_restarts, scheduling_strategy=strategy).remote(
                        job, num_gpus, placement.engine, placement.headroom, progress)
                )
        except BaseException:
            self.close()
            raise

    @property
    def primary(self) -> Any:
        return self.actors[0]

    def scoring_strategy(self) -> Any | None:
        """Scheduling for scorers and the boundary loader: inside the group when colocated."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if self.strategy != "STRICT_PACK" or len(self.bundles) <= self.replicas:
            return None
        return PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=-1)

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in self.actors:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(a, no_restart=True)
        self.actors = []
        if self.pg is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self.pg)
            self.pg = None

    def __enter__(self) -> ModelGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
