"""Healing on a Ray cluster: Ray Train's ``TorchTrainer`` running the same Lightning loop on N workers.

Each worker loads the pruned model itself (from the checkpoint folder or by applying the plan to the
dense model — both must be readable on every node: a shared path, or the bundled models' cache),
seeds, wraps LoRA and calls :func:`blockprune.healing.run.fit_lora` with Lightning's Ray strategy
(``RayDDPStrategy``; ``RayFSDPStrategy`` shards parameters, gradients and optimizer state over the
workers for 13B-class models) and ``RayLightningEnvironment``, prepared by ``prepare_trainer``.

The global batch is split over workers (:meth:`HealConfig.accumulation`), and each worker's share of
a step is fixed by the step index (:class:`~blockprune.healing.data.StepBatchSampler`), so N workers
compute the same updates as one process with the same seed and global batch, up to the order of
floating-point sums in the all-reduce. Checkpoints go to ``out_dir/checkpoints`` (a shared path on a
multi-node cluster); a worker failure restarts the loop, which resumes from ``last.ckpt``. The driver
merges the adapter from the final checkpoint with the same code as the in-process path.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from blockprune.distributed.cluster import InsufficientResourcesError, connect
from blockprune.env import apply_env_defaults
from blockprune.errors import BadInputError
from blockprune.models.adapters import adapter_for_config

apply_env_defaults()
log = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")
OUTCOME_FILE = "outcome.json"
LAST = "last.ckpt"


@dataclass(frozen=True)
class RayHealSettings:
    """How the healing is spread: ``workers`` processes, each with ``gpus_per_worker`` GPUs (0 = CPU)."""

    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    strategy: str = "ddp"
    max_failures: int = 0
    address: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise BadInputError(f"--workers must be >= 1, got {self.workers}")
        if self.strategy not in STRATEGIES:
            raise BadInputError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.strategy == "fsdp" and self.gpus_per_worker <= 0:
            raise BadInputError("--strategy fsdp shards over GPUs; give --gpus-per-worker (ddp runs on CPUs)")


def check_resources(settings: RayHealSettings, info: Any) -> None:
    """Refuse a request the connected cluster cannot hold, before any worker starts."""

    need_gpu = settings.workers * settings.gpus_per_worker
    need_cpu = settings.workers * settings.cpus_per_worker
    if need_gpu > info.total_gpus:
        raise InsufficientResourcesError(
            f"healing asks for {settings.workers} worker(s) × {settings.gpus_per_worker:g} GPU = {need_gpu:g} GPUs, "
            f"the Ray cluster has {info.total_gpus:g}")
    if need_cpu > info.total_cpus:
        raise InsufficientResourcesError(
            f"healing asks for {settings.workers} worker(s) × {settings.cpus_per_worker:g} CPU = {need_cpu:g} CPUs, "
            f"the Ray cluster has {info.total_cpus:g}")


def ray_preflight(settings: RayHealSettings) -> Any:
    """Connect to the cluster (or start a local one), refuse a request it cannot hold; returns its ClusterInfo."""

    info = connect(settings.address)
    check_resources(settings, info)
    return info


def _strategy(name: str, inputs: Any) -> Any:
    from ray.train.lightning import RayDDPStrategy, RayFSDPStrategy

    if name == "ddp":
        return RayDDPStrategy(find_unused_parameters=False)

    layer_cls = adapter_for_config(inputs.source.config).no_split_class
    import transformers

    policy = {cls for cls in (getattr(transformers, layer_cls, None),) if cls is not None}
    if not policy:  # decoder-layer classes live in per-model modules
        import importlib

        family = adapter_for_config(inputs.source.config).family
        mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        policy = {getattr(mod, layer_cls)}
    # use_orig_params: LoRA puts trainable and frozen tensors in one wrapped unit
    return RayFSDPStrategy(auto_wrap_policy=policy, use_orig_params=True, state_dict_type="full",
                           sharding_strategy="FULL_SHARD")


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train
    from ray.train.lightning import RayLightningEnvironment, prepare_trainer

    from blockprune.healing.run import fit_lora, mlflow_logger
    from blockprune.healing.trainer import TrainerSetup, last_checkpoint

    inputs = config["inputs"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    out_dir = Path(config["out_dir"])
    resume = config["resume"] or (last_checkpoint(out_dir) if config["auto_resume"] else None)
    model, _ = inputs.source.load()
    setup = TrainerSetup(out_dir=out_dir, accelerator="gpu" if config["use_gpu"] else "cpu", devices="auto",
                         strategy=_strategy(config["strategy"], inputs), plugins=[RayLightningEnvironment()],
                         logger=mlflow_logger(config["mlflow"]) if rank == 0 else False,
                         progress=config["progress"] and rank == 0)
    outcome, _ = fit_lora(inputs, model, setup, world_size=world, resume=resume, prepare_trainer=prepare_trainer)
    # Rank 0 reports the outcome and the final adapter checkpoint through Ray's storage, so the driver gets them
    # even when it does not share a file system with rank 0. Every rank must call report (it is a barrier).
    with tempfile.TemporaryDirectory(prefix="blockprune-heal-") as tmp:
        checkpoint = None
        if rank == 0:
            (Path(tmp) / OUTCOME_FILE).write_text(json.dumps(asdict(outcome)))
            shutil.copy2(outcome.checkpoint, Path(tmp) / LAST)
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({"steps": outcome.steps}, checkpoint=checkpoint)


def fit_on_ray(inputs: Any, out_dir: str | Path, settings: RayHealSettings, *, mlflow: tuple[str, str, str] | None = None,
               resume: str | Path | None = None, progress: bool = True) -> Any:
    """Train on the cluster; returns rank 0's :class:`~blockprune.healing.run.FitOutcome`.

    Connects to ``settings.address`` (or ``RAY_ADDRESS``), or starts a local cluster.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from blockprune.healing.run import FitOutcome

    ray_preflight(settings)
    inputs.cfg.accumulation(settings.workers)  # the batch must split over the workers
    out_dir = Path(out_dir).resolve()
    use_gpu = settings.gpus_per_worker > 0
    resources = {"CPU": settings.cpus_per_worker} | ({"GPU": settings.gpus_per_worker} if use_gpu else {})
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={"inputs": inputs, "out_dir": str(out_dir), "resume": str(resume) if resume else None,
                           "auto_resume": settings.max_failures > 0, "strategy": settings.strategy,
                           "use_gpu": use_gpu, "mlflow": mlflow, "progress": progress},
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(name="heal", storage_path=str(out_dir / "ray"),
                                       failure_config=ray.train.FailureConfig(max_failures=settings.max_failures)),
    )
    # Ray Train installs its own SIGINT handler in the driver and leaves it there; put ours back, so Ctrl-C
    # after (or around) a Ray healing still reaches the job's own handling
    previous = signal.getsignal(signal.SIGINT)
    try:
        result = trainer.fit()
    finally:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            signal.signal(signal.SIGINT, previous)
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("the Ray Train run ended without reporting its result")
    local = out_dir / "checkpoints" / LAST
    local.parent.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as d:
        data = json.loads((Path(d) / OUTCOME_FILE).read_text())
        if not local.exists() or not local.samefile(Path(d) / LAST):
            shutil.copy2(Path(d) / LAST, local)
    data["history"] = [tuple(h) for h in data["history"]]
    data["val_history"] = [tuple(h) for h in data["val_history"]]
    data["checkpoint"] = str(local)
    return FitOutcome(**data)
