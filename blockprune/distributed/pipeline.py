"""One job on a Ray cluster: the single-process pipeline with actors and tasks swapped in.

Same steps and same MLflow layout as :func:`blockprune.jobs.runner.run_job` (one parent run per
job, one child run per trial); what changes is where each step runs:

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

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from blockprune.calibration.store import clear_stale_partials, finished_store, store_lock
from blockprune.distributed.capture import capture_with_actors
from blockprune.distributed.cluster import ClusterInfo, InsufficientResourcesError, cluster_info
from blockprune.distributed.model_actor import ActorPlacement, ModelGroup, resolve_num_gpus
from blockprune.distributed.scoring import RayScoring, ScoringOptions
from blockprune.tracking.tracker import submission_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedSettings:
    """How a job uses the cluster: its model actors and its scoring tasks."""

    placement: ActorPlacement = field(default_factory=ActorPlacement)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)


@dataclass
class JobOutcome:
    """What one job produced (or why it failed), for the sweep summary."""

    name: str
    model: str
    corpus: str
    status: str = "PENDING"
    results: list[Any] = field(default_factory=list)
    store_path: str | None = None
    store_reused: bool | None = None
    capture_seconds: float = 0.0
    num_gpus: int | None = None
    seconds: float = 0.0
    run_id: str | None = None
    scoring_tasks: int = 0
    round_trips: int = 0
    error: str | None = None


def ray_tags() -> dict[str, str]:
    """Job identity for MLflow: the Ray job id and, under ``ray job submit``, the submission id."""
    import ray

    tags = {"blockprune.engine": "ray"}
    if ray.is_initialized():
        tags["ray.job_id"] = ray.get_runtime_context().get_job_id()
    sid = submission_id()
    if sid:
        tags["ray.submission_id"] = sid
    return tags


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


def run_distributed_job(job: Any, tracker: Any | None = None, settings: DistributedSettings | None = None, *,
                        info: ClusterInfo | None = None, progress: bool = False,
                        echo: Callable[[str], None] = print, job_name: str | None = None,
                        tags: dict[str, str] | None = None, outcome: JobOutcome | None = None,
                        log_lock: Any | None = None) -> JobOutcome:
    """Run every trial of ``job`` on the connected cluster; raises on failure (after cleaning up).

    ``log_lock`` serialises artifact logging when several jobs share one process (a sweep).
    """
    import ray

    from blockprune.jobs.runner import TrialResult, make_plan, prepare, store_meta, store_path, trial_record
    from blockprune.tracking.artifacts import log_trial
    from blockprune.tracking.tracker import Tracker

    settings = settings or DistributedSettings()
    placement = settings.placement
    tracker = tracker or Tracker(enabled=False)
    t_start = time.perf_counter()
    out = outcome or JobOutcome(job_name or job.model, job.model, job.calibration.corpus)
    out.status = "RUNNING"
    tracker.check()
    p = prepare(job)
    info = info or cluster_info()
    check_scoring_capacity(placement, settings.scoring, info, job_name or job.model)
    k = resolve_num_gpus(p.resolved.path, job.dtype, placement, info, what=f"{p.resolved.name} actor")
    out.num_gpus = k
    name = job_name or p.resolved.name
    echo(f"[blockprune] {name}: {p.n_layers} layers ({p.adapter.family}); {k} GPU(s) per actor, "
         f"{placement.replicas} replica(s); calibration {job.calibration.n_samples}×{job.calibration.seq_len} "
         f"tokens of {job.calibration.corpus!r}")
    path = store_path(p)
    out.store_path = str(path)
    group: ModelGroup | None = None
    job_params = {"model": p.resolved.name, "revision": p.resolved.revision,
                  "calibration": asdict(job.calibration), "capture": asdict(job.capture),
                  "evaluation": asdict(job.evaluation), "n_trials": len(job.trials),
                  "placement": asdict(placement), "scoring": asdict(settings.scoring), "num_gpus": k}
    all_tags = {"blockprune.kind": "job", "model": p.resolved.name, **ray_tags(), **(tags or {})}
    try:
        with tracker.run(name, params=job_params, tags=all_tags) as parent_id:
            out.run_id = parent_id
            t0 = time.perf_counter()
            with store_lock(path):
                store = finished_store(path)
                reused = store is not None
                if store is None:
                    clear_stale_partials(path)
                    group = ModelGroup(job, placement, k, placement.replicas, with_scorers=placement.replicas == 1,
                                       scorer_cpus=settings.scoring.num_cpus, info=info, name=f"{name} capture",
                                       progress=progress)
                    store = capture_with_actors(p, group.actors, path, store_meta(p))
                    if placement.replicas > 1:  # free the replicas' resources; one actor evaluates
                        group.close()
                        group = None
                else:
                    log.info("reusing activation store %s (no recapture)", path)
            capture_s = 0.0 if reused else time.perf_counter() - t0
            out.store_reused, out.capture_seconds = reused, capture_s
            echo(f"[blockprune] {name}: activation store {'reused (no recapture)' if reused else 'captured'}: "
                 f"{store.path} ({store.n_rows} sampled tokens × {store.n_layers + 1} boundaries)")
            if group is None:
                group = ModelGroup(job, placement, k, 1, with_scorers=True, scorer_cpus=settings.scoring.num_cpus,
                                   info=info, name=f"{name} evaluation", progress=progress)
            scoring = RayScoring(settings.scoring, strategy=group.scoring_strategy())
            dense_ev = ray.get(group.primary.evaluate.remote(None))
            dense = dense_ev["metrics"]
            echo(f"[blockprune] {name}: dense perplexity on held-out {p.eval_corpus!r}: {dense['ppl']:.3f}")
            tracker.log_metrics({f"dense.{k_}": v for k_, v in dense.items()}
                                | {"capture_seconds": capture_s,
                                   "tokens_calibrated": store.manifest["tokens_calibrated"]})
            tracker.set_tags({"store_checksum": store.checksum, "store_reused": reused, "store_path": store.path})
            for trial in job.trials:
                t1 = time.perf_counter()
                before = scoring.tasks
                sel, scores, run_scores, sel_info = scoring.score_and_select(store, trial)
                select_s = time.perf_counter() - t1
                plan = make_plan(p, store, trial, sel, scores, run_scores, sel_info)
                ev = ray.get(group.primary.evaluate.remote(plan, job.save_dir))
                metrics, tasks = ev["metrics"], ev["tasks"]
                res, params, trial_tags = trial_record(p, store, trial, dense, metrics, sel.evaluations, select_s,
                                                       capture_s)
                res["ray_scoring_tasks"] = scoring.tasks - before
                result = TrialResult(trial, plan, res, tasks, saved_to=ev["saved_to"])
                with tracker.run(trial.name, params=params, nested=True,
                                 tags=trial_tags | ray_tags() | (tags or {})) as run_id:
                    result.run_id = run_id
                    with log_lock or contextlib.nullcontext():
                        tracker.log_metrics(res)
                        log_trial(tracker, plan, res, tasks=tasks)
                    if result.saved_to:
                        tracker.set_tags({"saved_to": result.saved_to})
                out.results.append(result)
                echo(f"[blockprune] {name} · {trial.name}: drop {trial.granularity}s {list(plan.blocks)} · "
                     f"perplexity {dense['ppl']:.3f} → {metrics['ppl']:.3f} (×{res['ppl_ratio']:.2f}) · "
                     f"{sel.evaluations} exact scores, {res['ray_scoring_tasks']} Ray tasks")
            out.scoring_tasks, out.round_trips = scoring.tasks, scoring.round_trips
            tracker.log_metrics({"job_seconds": time.perf_counter() - t_start,
                                 "ray_scoring_tasks": scoring.tasks, "ray_round_trips": scoring.round_trips})
        out.status = "SUCCEEDED"
        return out
    finally:
        if group is not None:
            group.close()
        out.seconds = time.perf_counter() - t_start
