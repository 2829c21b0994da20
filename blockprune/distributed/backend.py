"""The Ray backend of the job loop: model actors on GPUs, scoring fan-out to CPU tasks.

Same steps and same MLflow record as the local backend (the loop is :func:`blockprune.pipeline.job.run_job`);
what changes is where each step runs:

- prepare / validate / store key: driver (cheap, fails before anything is scheduled);
- capture: model actor(s) in a placement group, or the finished store is reused (logged);
- scoring: Ray tasks through :class:`~blockprune.distributed.scoring.RayScoring`, selection in
  the driver (one round trip per FBS iteration);
- evaluation (dense and each pruned copy): the model actor that holds the model.

The driver must see the store path (local disk of a one-node cluster, or a shared path such as
an NFS/EFS mount passed as ``--store-uri``): it lays out and commits the store and keeps the
score cache beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from blockprune.calibration.store import ActivationStore, open_or_capture
from blockprune.distributed.capture import capture_with_actors
from blockprune.distributed.cluster import ClusterInfo, InsufficientResourcesError, cluster_info
from blockprune.distributed.model_actor import ModelGroup, resolve_num_gpus
from blockprune.distributed.scoring import RayScoring
from blockprune.env import apply_env_defaults
from blockprune.pipeline.config import ActorPlacement, DistributedSettings, JobConfig, ScoringOptions
from blockprune.pipeline.evaluate import Evaluation
from blockprune.pipeline.job import JobResult, run_job
from blockprune.pipeline.prepare import Prepared, store_meta, store_path
from blockprune.pipeline.results import ResultsFolder
from blockprune.selection.plan import PrunePlan

log = logging.getLogger(__name__)


def check_scoring_capacity(placement: ActorPlacement, scoring: ScoringOptions, info: ClusterInfo,
                           what: str = "job") -> None:
    """Refuse settings under which scoring tasks could never be scheduled.

    While a job scores, its evaluation actor keeps its CPU reservation; scoring tasks outside a
    colocated placement group need CPUs beyond it, and each task must fit on some node.
    """
    biggest = max((n.cpus for n in info.nodes if n.alive), default=0.0)
    if scoring.num_cpus > biggest:
        raise InsufficientResourcesError(
            f"{what}: a scoring task asks for {scoring.num_cpus:g} CPUs but the largest node has {biggest:g}")
    if not placement.colocate and placement.num_cpus + scoring.num_cpus > info.total_cpus:
        raise InsufficientResourcesError(
            f"{what}: the model actor reserves {placement.num_cpus:g} of the cluster's {info.total_cpus:g} CPUs, "
            f"leaving less than the {scoring.num_cpus:g} a scoring task needs; lower placement.num_cpus or "
            "scoring.num_cpus, or use colocate with scorer_slots")


class RayBackend:
    """Model actors in a placement group hold the model; Ray tasks compute exact scores."""

    engine = "ray"

    def __init__(self, settings: DistributedSettings | None = None, *, info: ClusterInfo | None = None,
                 progress: bool = False, name: str | None = None) -> None:
        self.settings = settings or DistributedSettings()
        self.info = info
        self.progress = progress
        self.name = name
        self.num_gpus: int | None = None
        self.group: ModelGroup | None = None
        self.job: JobConfig | None = None
        self._scoring: RayScoring | None = None

    # ------------------------------------------------------------------ identity

    def engine_settings(self) -> dict[str, Any]:
        return {"placement": asdict(self.settings.placement), "scoring": asdict(self.settings.scoring),
                "num_gpus": self.num_gpus}

    def engine_tags(self) -> dict[str, str]:
        import ray

        return {"blockprune.engine": self.engine,
                "engine.job_id": ray.get_runtime_context().get_job_id() if ray.is_initialized() else ""}

    def describe(self) -> str:
        streamed = "layer-streamed, " if self.job is not None and self.job.streamed else ""
        return f"{streamed}{self.num_gpus} GPU(s) per actor, {self.settings.placement.replicas} replica(s); "

    # ------------------------------------------------------------------ steps

    def open(self, p: Prepared) -> None:
        """Check the cluster can run the job and size its actors; nothing is started yet."""
        self.job = p.job
        self.info = self.info or cluster_info()
        what = self.name or p.resolved.name
        placement = self.settings.placement
        check_scoring_capacity(placement, self.settings.scoring, self.info, what)
        one = 1 if self.info.total_gpus else 0
        if p.job.streamed and placement.num_gpus is None:
            self.num_gpus = one  # a streamed actor holds one layer at a time: one GPU (or none) is enough
            return
        try:
            self.num_gpus = resolve_num_gpus(p.resolved.path, p.job.dtype, placement, self.info,
                                             what=f"{p.resolved.name} actor")
        except InsufficientResourcesError as e:
            if p.job.streamed is False or placement.num_gpus is not None or not one:
                raise
            log.warning("%s; streaming it layer by layer on one GPU per actor instead", e)
            self.job = replace(p.job, streamed=True)
            self.num_gpus = one

    def _group(self, replicas: int, purpose: str) -> ModelGroup:
        placement = self.settings.placement
        return ModelGroup(self.job, placement, self.num_gpus or 0, replicas, with_scorers=replicas == 1,
                          scorer_cpus=self.settings.scoring.num_cpus, info=self.info,
                          name=f"{self.name or self.job.model} {purpose}", progress=self.progress)

    def capture(self, p: Prepared, progress: bool) -> tuple[ActivationStore, bool]:
        """The same reuse-or-capture path as the local backend (verify, move a corrupt store aside, float32
        fallback), with the rows written by the model actors."""
        path = store_path(p)
        replicas = self.settings.placement.replicas

        def run(store_dtype: str) -> ActivationStore:
            if self.group is None:
                self.group = self._group(replicas, "capture")
            meta = store_meta(p)
            if store_dtype != p.job.capture.store_dtype:
                meta["store_dtype_requested"] = p.job.capture.store_dtype
            return capture_with_actors(p, self.group.actors, path, meta, store_dtype=store_dtype)

        store, reused = open_or_capture(path, run, p.job.capture.store_dtype)
        if not reused and replicas > 1 and self.group is not None:  # free the replicas; one actor evaluates
            self.group.close()
            self.group = None
        return store, reused

    @property
    def scorers(self) -> RayScoring:
        if self._scoring is None:
            strategy = self._evaluator().scoring_strategy()
            self._scoring = RayScoring(self.settings.scoring, strategy=strategy)
        return self._scoring

    def _evaluator(self) -> ModelGroup:
        if self.group is None:
            self.group = self._group(1, "evaluation")
        return self.group

    def evaluate(self, p: Prepared, plan: PrunePlan | None, save_dir: str | None, progress: bool) -> Evaluation:
        import ray

        return ray.get(self._evaluator().primary.evaluate.remote(plan, save_dir))

    def counters(self) -> tuple[int, int]:
        return self._scoring.counters() if self._scoring is not None else (0, 0)

    def heal(self, p: Prepared, plan: PrunePlan, out_dir: str, tracker: Any, parent_run_id: str | None,
             progress: bool) -> dict[str, Any]:
        """LoRA-heal one plan in a Ray task with the model actor's resources (the actors are released first,
        so a one-GPU node can heal). More devices per healing: ``blockprune heal --devices N``."""
        import ray

        self.close()
        placement = self.settings.placement
        task = ray.remote(_heal_task).options(num_gpus=self.num_gpus or 0, num_cpus=placement.num_cpus,
                                              max_retries=0)
        return ray.get(task.remote(plan, p.resolved.name, p.job.heal, out_dir, tracker, parent_run_id, progress))

    def close(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


def _heal_task(plan: PrunePlan, model: str, cfg: Any, out_dir: str, tracker: Any, parent_run_id: str | None,
               progress: bool) -> dict[str, Any]:
    from blockprune.healing.run import heal_plan

    apply_env_defaults()
    return heal_plan(plan, model, cfg, out_dir, tracker=tracker, parent_run_id=parent_run_id, dense=True,
                     progress=progress).to_dict()


# ------------------------------------------------------------------------------ one job, for a sweep


@dataclass
class JobOutcome:
    """What one job of a sweep produced (or why it failed), for the sweep summary."""

    name: str
    model: str
    corpus: str
    status: str = "PENDING"
    num_gpus: int | None = None
    error: str | None = None
    result: JobResult = field(default_factory=JobResult)

    @property
    def results(self) -> list[Any]:
        return self.result.results

    @property
    def run_id(self) -> str | None:
        return self.result.run_id

    @property
    def store_path(self) -> str | None:
        return self.result.store_path

    @property
    def store_reused(self) -> bool | None:
        return self.result.store_reused

    @property
    def capture_seconds(self) -> float:
        return self.result.capture_seconds

    @property
    def seconds(self) -> float:
        return self.result.seconds

    @property
    def scoring_tasks(self) -> int:
        """Exact scores computed by Ray tasks (the job's ``scores_computed``)."""
        return self.result.scores_computed

    @property
    def round_trips(self) -> int:
        """Scoring fan-outs (the job's ``scoring_batches``)."""
        return self.result.scoring_batches


def run_distributed_job(job: JobConfig, tracker: Any | None = None, settings: DistributedSettings | None = None, *,
                        info: ClusterInfo | None = None, progress: bool = False,
                        echo: Callable[[str], None] = print, job_name: str | None = None,
                        tags: dict[str, str] | None = None, outcome: JobOutcome | None = None,
                        log_lock: Any | None = None, results: ResultsFolder | None = None) -> JobOutcome:
    """Run every trial of ``job`` on the connected cluster through the one job loop; raises on failure
    (after releasing its actors), with ``outcome`` filled as far as the job got. ``results`` receives every
    plan and number before it is logged."""
    out = outcome or JobOutcome(job_name or job.model, job.model, job.calibration.corpus)
    out.status = "RUNNING"
    backend = RayBackend(settings, info=info, progress=progress, name=job_name)
    try:
        run_job(job, backend, tracker, progress=progress, echo=echo, job_name=job_name, tags=tags,
                log_lock=log_lock, result=out.result, results=results)
    finally:
        out.num_gpus = backend.num_gpus
    out.status = "SUCCEEDED"
    return out
