"""Scheduling a sweep on a Ray cluster: every (model, calibration) job of a spec, concurrently.

Each job runs the one job loop on the Ray backend; their model actors queue on GPU resources (placement
groups), a failed job is reported (its traceback logged at ERROR when it is a bug) and does not stop the
others. GPU requests of every model are checked before the first job starts.
"""

from __future__ import annotations

import logging
import threading
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from blockprune.distributed.backend import JobOutcome, check_scoring_capacity, run_distributed_job
from blockprune.distributed.cluster import cluster_info
from blockprune.distributed.model_actor import resolve_num_gpus
from blockprune.errors import BlockpruneError
from blockprune.models.zoo import resolve_model
from blockprune.pipeline.config import DistributedSettings
from blockprune.pipeline.results import ResultsFolder, default_results_dir, slug
from blockprune.pipeline.sweep_spec import SweepSpec
from blockprune.tracking.tracker import Tracker

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    name: str
    sweep_id: str
    outcomes: list[Any]

    @property
    def ok(self) -> bool:
        return all(o.status == "SUCCEEDED" for o in self.outcomes)


def run_sweep(spec: SweepSpec, *, tracker: Any | None = None, progress: bool = False,
              echo: Callable[[str], None] = print, max_concurrent_jobs: int | None = None) -> SweepResult:
    """Run every job of a validated spec on the connected cluster; failures are collected, not raised."""
    info = cluster_info()
    sweep_id = uuid.uuid4().hex[:12]
    tracker = tracker or Tracker(spec.tracking.uri, spec.tracking.experiment, enabled=spec.tracking.enabled)
    tracker.check()  # once, in this thread: creates the experiment before jobs race for it
    jobs = spec.jobs()
    # GPU requests are checked for every model before any job starts
    gpus: dict[str, int] = {}
    for m in spec.models:
        check_scoring_capacity(m.placement, spec.scoring, info, f"model {m.name}")
        gpus[m.name] = resolve_num_gpus(resolve_model(m.name).path, m.dtype, m.placement, info,
                                        what=f"model {m.name}")
    echo(f"[blockprune] sweep {spec.name!r} ({sweep_id}): {len(jobs)} job(s) × {len(spec.trials)} trial(s) on "
         f"{info.total_cpus:g} CPUs / {info.total_gpus:g} GPUs in {len(info.nodes)} node(s)")
    outcomes = [JobOutcome(name, job.model, job.calibration.corpus) for name, job, _ in jobs]
    log_lock = threading.Lock()
    tags = {"blockprune.sweep": spec.name, "blockprune.sweep_id": sweep_id}
    results_root = default_results_dir(f"sweep-{spec.name}", sweep_id)  # plans and numbers, before MLflow

    def run_one(i: int) -> None:
        name, job, m = jobs[i]
        settings = DistributedSettings(replace(m.placement, num_gpus=gpus[m.name]), spec.scoring)
        try:
            run_distributed_job(job, tracker, settings, log_lock=log_lock, info=info, progress=progress,
                                echo=echo, job_name=name, tags=tags, outcome=outcomes[i],
                                results=ResultsFolder(results_root / slug(name)))
        except Exception as e:  # noqa: BLE001 - one failed job must not stop the others
            outcomes[i].status = "FAILED"
            outcomes[i].error = f"{type(e).__name__}: {e}"
            echo(f"[blockprune] {name}: FAILED: {outcomes[i].error}")
            if isinstance(e, BlockpruneError):
                log.error("job %s failed: %s", name, e)
            else:  # a bug: its traceback is what the user needs to report it
                log.error("job %s failed:\n%s", name, traceback.format_exc())

    workers = max_concurrent_jobs or spec.max_concurrent_jobs or len(jobs)
    cap = concurrency_cap(spec, info.total_cpus)
    if cap < workers:
        echo(f"[blockprune] running at most {cap} job(s) at once: more model actors would hold every CPU "
             "and leave none for scoring tasks")
        workers = cap
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="blockprune-job") as pool:
        list(pool.map(run_one, range(len(jobs))))
    if results_root.exists():
        echo(f"[blockprune] plans and results of every job: {results_root}")
    return SweepResult(spec.name, sweep_id, outcomes)


def concurrency_cap(spec: SweepSpec, total_cpus: float) -> int:
    """Jobs that may run at once so that actors of non-colocated jobs never hold every CPU.

    A job reserves ``num_cpus × replicas`` CPUs at most (its capture); scoring tasks outside a
    colocated placement group need ``scoring.num_cpus`` more. Colocated jobs bring their own.
    """
    loose = [m.placement.num_cpus * m.placement.replicas for m in spec.models if not m.placement.colocate]
    if not loose or max(loose) <= 0:
        return max(1, len(spec.jobs()))
    return max(1, int((total_cpus - spec.scoring.num_cpus) // max(loose)))
