"""The one job loop: prepare → capture (or reuse) → dense evaluation → per trial: score, select, plan,
evaluate, log → job summary. Every backend runs through here, so local and Ray runs log the same record.

Results first, tracking second: with a :class:`~blockprune.pipeline.results.ResultsFolder` each plan is
written when it is selected and the numbers after each step, before they are logged; a tracking failure
mid-job turns tracking off (one WARNING line), the job finishes, and :class:`TrackingFailedError` is raised
at the very end, naming the results folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockprune.env import cache_dir
from blockprune.pipeline.backend import Backend, LocalBackend
from blockprune.pipeline.config import JobConfig, TrialSpec
from blockprune.pipeline.evaluate import Evaluation, pruned_name
from blockprune.pipeline.prepare import Prepared, prepare, trial_store
from blockprune.pipeline.records import TrialResult, job_params, job_tags, store_tags, trial_record
from blockprune.pipeline.results import ResultsFolder
from blockprune.pipeline.scoring import score_and_select
from blockprune.tracking.artifacts import log_job_summary, log_trial
from blockprune.tracking.tracker import JobInterrupted, Tracker, TrackingFailedError

Echo = Callable[[str], None]


@dataclass
class JobResult:
    """What a job produced: its trials' results and the facts a sweep summary reports."""

    results: list[TrialResult] = field(default_factory=list)
    run_id: str | None = None
    store_path: str | None = None
    store_reused: bool | None = None
    capture_seconds: float = 0.0
    scores_computed: int = 0
    scoring_batches: int = 0
    seconds: float = 0.0
    results_dir: str | None = None
    tracking_failure: str | None = None


def job_key(job: JobConfig) -> str:
    """One id for "the same job" across processes (its whole config): how a rerun finds runs a dead
    process left RUNNING."""
    return hashlib.sha256(json.dumps(job.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_job(job: JobConfig, backend: Backend | None = None, tracker: Tracker | None = None, *,
            progress: bool = True, echo: Echo = print, job_name: str | None = None,
            tags: dict[str, str] | None = None, prepared: Prepared | None = None,
            log_lock: Any | None = None, result: JobResult | None = None,
            results: ResultsFolder | None = None) -> JobResult:
    """Run every trial of a job on one model; one parent MLflow run, one child run per trial.

    ``tags`` are added to every run (a sweep's name and id); ``prepared`` skips :func:`prepare` when the
    caller already did it; ``log_lock`` serialises artifact logging when several jobs share one process;
    ``result`` is filled as the job goes (a sweep reports how far a failed job got); ``results`` receives
    every plan and number before it is logged. The backend is closed at the end, also on failure.

    Raises :class:`TrackingFailedError` after the job finished when tracking failed on the way."""
    backend = backend or LocalBackend()
    tracker = tracker or Tracker(enabled=False)
    tags = dict(tags or {})
    out = result if result is not None else JobResult()
    t_start = time.perf_counter()
    status = "failed"
    try:
        tracker.check()
        p = prepared or prepare(job)
        if results is not None:
            out.results_dir = str(results.path)
            results.start(job.to_dict(), {"uri": tracker.tracking_uri if tracker.enabled else None,
                                          "experiment": tracker.experiment, "job_id": tracker.job_id})
        echo(f"[blockprune] {job_name or p.resolved.name}: input checked; loading the model ({job.dtype})")
        backend.open(p)
        name = job_name or p.resolved.name
        cal = job.calibration
        echo(f"[blockprune] {name}: {p.n_layers} layers ({p.adapter.family}); {backend.describe()}calibration "
             f"{cal.n_samples}×{cal.seq_len} tokens of {cal.corpus!r}")
        engine_tags = backend.engine_tags()
        with tracker.run(name, params=job_params(p, backend.engine, backend.engine_settings()),
                         tags=job_tags(p, engine_tags) | tags, job_key=job_key(job)) as parent_id:
            out.run_id = parent_id
            t0 = time.perf_counter()
            store, reused = backend.capture(p, progress)
            capture_s = 0.0 if reused else time.perf_counter() - t0
            out.store_path, out.store_reused, out.capture_seconds = str(store.path), reused, capture_s
            echo(f"[blockprune] {name}: activation store {'reused' if reused else 'captured'}: {store.path} "
                 f"({store.n_rows} sampled tokens × {store.n_layers + 1} boundaries)")
            dense = backend.evaluate(p, None, None, progress).metrics
            echo(f"[blockprune] {name}: dense perplexity on held-out {p.eval_corpus!r}: {dense['ppl']:.3f}")
            if results is not None:
                results.set(mlflow_run=parent_id, store={"path": str(store.path), "checksum": store.checksum,
                                                         "reused": reused, **store.notes}, dense=dense)
            tracker.log_metrics({f"dense.{k}": v for k, v in dense.items()}
                                | {"capture_seconds": capture_s, "tokens_calibrated": store.manifest["tokens_calibrated"]})
            tracker.set_tags(store_tags(store, reused))
            lock = log_lock or contextlib.nullcontext()
            stores = {job.capture: store}
            for i, trial in enumerate(job.trials):
                t_p, t_store = trial_store(p, trial, stores, lambda tp, t: _extra_store(tp, t, backend, progress,
                                                                                        echo, name))
                out.results.append(_run_trial(t_p, backend, t_store, trial, dense, capture_s, tracker, progress, echo,
                                              name, engine_tags | tags, lock, results, i))
            with lock:
                log_job_summary(tracker, out.results)
            out.scores_computed, out.scoring_batches = backend.counters()
            tracker.log_metrics({"job_seconds": time.perf_counter() - t_start, "scores_computed": out.scores_computed,
                                 "scoring_batches": out.scoring_batches})
        if job.heal is not None:
            heal_all(p, backend, out.results, tracker, progress, echo)
        echo(f"[blockprune] MLflow: {tracker.describe(parent_id)}")
        status = "finished"
    except (JobInterrupted, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        out.seconds = time.perf_counter() - t_start
        out.tracking_failure = tracker.failure
        if results is not None and out.results_dir is not None:
            results.finish(status, seconds=out.seconds, tracking_failure=tracker.failure)
        backend.close()
    if tracker.failure:
        where = f"; its plans and results are in {out.results_dir}" if out.results_dir else ""
        raise TrackingFailedError(f"MLflow tracking failed mid-job ({tracker.failure}); the job finished{where}")
    return out


def heal_all(p: Prepared, backend: Backend, results: list[TrialResult], tracker: Tracker, progress: bool,
             echo: Echo) -> None:
    """LoRA-heal every trial's pruned model once all trials are measured, each as a ``heal`` child run of its
    trial run; the merged models go under ``save_dir`` (or the cache), one folder per trial run."""
    root = Path(p.job.save_dir) if p.job.save_dir else Path(cache_dir()) / "healed"
    for r in results:
        dest = root / f"{pruned_name(p, r.plan)}-healed-{(r.run_id or uuid.uuid4().hex)[:8]}"
        r.healed = backend.heal(p, r.plan, str(dest), tracker, r.run_id, progress)
        m = r.healed["metrics"]
        ratios = {k.removeprefix("ppl_ratio_after."): v for k, v in m.items() if k.startswith("ppl_ratio_after.")}
        echo(f"[blockprune] {r.trial.name}: healed ({m['steps']:.0f} steps, {m['tokens_trained']:,.0f} tokens) · "
             + ", ".join(f"{c} ×{v:.2f} of dense" for c, v in ratios.items()))


def _extra_store(p: Prepared, trial: TrialSpec, backend: Backend, progress: bool, echo: Echo, name: str) -> Any:
    """A trial's own store beside the job's (a per-window estimator's: whole windows, position 0 kept)."""
    store, reused = backend.capture(p, progress)
    echo(f"[blockprune] {name}: per-window store for {trial.estimator} {'reused' if reused else 'captured'}: "
         f"{store.path} ({store.n_rows} rows: whole calibration windows, position 0 kept)")
    return store


def _run_trial(p: Prepared, backend: Backend, store: Any, trial: TrialSpec, dense: dict[str, float],
               capture_s: float, tracker: Tracker, progress: bool, echo: Echo, name: str,
               tags: dict[str, str], lock: Any, results: ResultsFolder | None = None, index: int = 0) -> TrialResult:
    t0 = time.perf_counter()
    computed_before = backend.counters()[0]
    scored = score_and_select(store, trial, backend.scorers)
    select_s = time.perf_counter() - t0
    computed = backend.counters()[0] - computed_before
    sel = scored.selection
    plan = scored.to_plan(trial, store, model_id=p.resolved.name, revision=p.resolved.revision,
                          n_blocks=p.n_layers, calibration=p.job.calibration)
    if results is not None:  # the plan is safe before the evaluation (which may fail) and any logging
        plan_file = results.plan(index, trial.name, plan)
        results.trial(index, {"trial": trial.name, "blocks": list(plan.blocks), "granularity": plan.granularity,
                              "plan": str(plan_file)})
    ev: Evaluation = backend.evaluate(p, plan, p.job.save_dir, progress)
    metrics = ev.metrics
    out, params, trial_tags = trial_record(p, store, trial, dense, metrics, sel.evaluations, select_s, capture_s,
                                           computed)
    result = TrialResult(trial, plan, out, ev.tasks, saved_to=ev.saved_to)
    if results is not None:
        results.trial(index, {"metrics": out, "tasks": ev.tasks, "saved_to": ev.saved_to})
    with tracker.run(trial.name, params=params, nested=True, tags=trial_tags | tags) as run_id:
        result.run_id = run_id
        with lock:
            tracker.log_metrics(out)
            log_trial(tracker, plan, out, tasks=ev.tasks, latency=ev.latency, samples=ev.samples)
        if ev.saved_to:
            tracker.set_tags({"saved_to": ev.saved_to})
    if results is not None and run_id is not None:
        results.trial(index, {"mlflow_run": run_id})
    echo(f"[blockprune] {name} · {trial.name}: drop {trial.granularity}s {list(plan.blocks)} · perplexity "
         f"{dense['ppl']:.3f} → {metrics['ppl']:.3f} (×{out['ppl_ratio']:.2f}) · "
         f"{out['params_removed'] / 1e6:.1f} M params removed · {sel.evaluations} exact scores ({computed} computed)")
    return result
