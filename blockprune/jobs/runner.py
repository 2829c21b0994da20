"""The single-process pipeline: validate → capture (or reuse) → score → select → apply → evaluate → log.

This is what a laptop runs and what each Ray model actor runs for its model; the distributed
layer swaps the run scorer for one that fans out to Ray tasks and nothing else changes.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from blockprune.calibration.capture import capture, store_key
from blockprune.calibration.corpora import Corpus, load_corpus
from blockprune.calibration.scoring import StoreRunScorer, entropy_increase
from blockprune.calibration.store import ActivationStore, clear_stale_partials, finished_store, store_lock
from blockprune.calibration.windows import TokenWindows, calibration_windows, heldout_windows
from blockprune.env import cache_dir
from blockprune.jobs.config import RUN_METHODS, JobConfig, TrialSpec
from blockprune.models.adapters import Adapter, adapter_for_config
from blockprune.models.zoo import ResolvedModel, load_model, load_tokenizer, resolve_model
from blockprune.selection import METHODS, select
from blockprune.selection.plan import PrunePlan
from blockprune.selection.result import Selection
from blockprune.tracking.artifacts import log_job_summary, log_trial
from blockprune.tracking.tracker import Tracker

log = logging.getLogger(__name__)

RunScorerFactory = Callable[[ActivationStore, str, dict[str, Any], str], Any]


@dataclass
class Prepared:
    """Everything checked and tokenised before a single weight is loaded."""

    job: JobConfig
    resolved: ResolvedModel
    adapter: Adapter
    n_layers: int
    tokenizer: Any
    corpus: Corpus
    windows: TokenWindows
    eval_windows: TokenWindows
    eval_corpus: str


@dataclass
class TrialResult:
    trial: TrialSpec
    plan: PrunePlan
    metrics: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str | None = None
    saved_to: str | None = None


def validate_trial(trial: TrialSpec, n_layers: int, has_mid: bool = True) -> None:
    """Every check a trial can fail without touching the model."""
    METHODS.get(trial.method)  # unknown method → lists the known ones
    if not 1 <= trial.n_prune < n_layers:
        raise ValueError(
            f"--prune must be between 1 and {n_layers - 1} for a model with {n_layers} layers, got {trial.n_prune}"
        )
    if trial.granularity != "layer" and trial.method in RUN_METHODS:
        raise ValueError(f"method {trial.method!r} scores runs of whole layers; use granularity 'layer'")
    if trial.estimator is not None:
        from blockprune import estimators

        estimators.get(trial.estimator)  # unknown estimator → lists the known ones
        if trial.method == "entrodrop" and not trial.estimator.startswith("entropy."):
            raise ValueError(f"entrodrop needs an entropy estimator (entropy.*), got {trial.estimator!r}")
        if trial.method.startswith("mi_") and not trial.estimator.startswith("mi."):
            raise ValueError(f"{trial.method} needs a mutual-information estimator (mi.*), got {trial.estimator!r}")
    if trial.s_start is not None and trial.method != "entrodrop":
        raise ValueError("s_start applies to entrodrop only")


def prepare(job: JobConfig) -> Prepared:
    """Resolve, validate and tokenise; raises before any forward pass on bad input."""
    from transformers import AutoConfig

    resolved = resolve_model(job.model)
    config = AutoConfig.from_pretrained(resolved.path)
    adapter = adapter_for_config(config)
    n_layers = adapter.n_layers(config)
    for t in job.trials:
        validate_trial(t, n_layers)
    tokenizer = load_tokenizer(resolved)
    cal = job.calibration
    corpus = load_corpus(cal.corpus, job.text_field)
    windows = calibration_windows(tokenizer, corpus, cal.n_samples, cal.seq_len, cal.seed)
    ev = job.evaluation
    eval_name = ev.corpus or cal.corpus
    eval_corpus = corpus if eval_name == cal.corpus else load_corpus(eval_name, job.text_field)
    eval_windows = heldout_windows(tokenizer, eval_corpus, ev.seq_len or cal.seq_len, ev.windows)
    if ev.tasks:
        from blockprune.evaluation.lm_eval_tasks import resolve_task_names

        resolve_task_names(list(ev.tasks))
    return Prepared(job, resolved, adapter, n_layers, tokenizer, corpus, windows, eval_windows, eval_name)


def store_meta(p: Prepared) -> dict[str, Any]:
    cal = p.job.calibration
    return {
        "model": p.resolved.name,
        "revision": p.resolved.revision,
        "corpus": cal.corpus,
        "corpus_fingerprint": p.corpus.fingerprint(),
        "n_samples": cal.n_samples,
        "seq_len": cal.seq_len,
        "seed": cal.seed,
        "dtype": p.job.dtype,
    }


def store_path(p: Prepared) -> Path:
    root = Path(p.job.store_root or Path(cache_dir()) / "stores")
    return root / f"{p.resolved.name.replace('/', '__')}-{store_key(store_meta(p), p.job.capture)}"


def capture_or_reuse(p: Prepared, model: Any, progress: bool = True) -> tuple[ActivationStore, bool]:
    """(store, reused): a finished store with the same settings is reused, never recaptured.

    Under the store's file lock, as the distributed path: a job that waits for another's capture of the
    same store reuses it, and partial folders of crashed captures are removed before capturing anew."""
    path = store_path(p)
    with store_lock(path):
        store = finished_store(path)
        if store is not None:
            log.info("reusing activation store %s (no recapture)", path)
            return store, True
        clear_stale_partials(path)
        return capture(model, p.adapter, p.windows, path, store_meta(p), p.job.capture, progress=progress), False


def _default_run_scorer(store: ActivationStore, estimator: str, params: dict[str, Any], granularity: str) -> Any:
    return StoreRunScorer(store, estimator, params, granularity)


def score_and_select(
    store: ActivationStore, trial: TrialSpec, run_scorer: RunScorerFactory = _default_run_scorer
) -> tuple[Selection, dict[str, list[float]], dict[str, float], dict[str, Any]]:
    """(selection, per-block scores, run scores, info) for one trial from a store."""
    n = store.n_layers
    g = trial.granularity
    stats = store.stats[g]
    scores: dict[str, list[float]] = {"bi": list(stats["bi"])}
    block_scores = None
    scorer = None
    info: dict[str, Any] = {}
    if trial.method == "shortgpt" and trial.estimator is None:
        block_scores = list(stats["bi"])
    elif trial.method == "relative_magnitude":
        block_scores = scores["relative_magnitude"] = list(stats["relmag"])
    elif trial.method == "entrodrop":
        delta_h, entropies = entropy_increase(store, trial.estimator, trial.estimator_params, g)
        block_scores = scores["delta_h"] = delta_h
        info["entropy"] = entropies
    elif trial.estimator is not None:
        scorer = run_scorer(store, trial.estimator, trial.estimator_params, g)
        if METHODS.get(trial.method).needs == "block":
            block_scores = scorer.block_scores()
            scores[METHODS.get(trial.method).score or trial.estimator] = block_scores
    sel = select(trial.method, n, trial.n_prune, block_scores=block_scores, score_run=scorer,
                 s_start=trial.s_start)
    run_scores: dict[str, float] = {}
    if scorer is not None and getattr(scorer, "cache", None) is not None:
        run_scores = dict(scorer.cache.values)
        singles = [run_scores.get(f"{i}-{i}") for i in range(n)]
        if all(v is not None for v in singles):
            scores[METHODS.get(trial.method).score or "score"] = singles
    return sel, scores, run_scores, info


def make_plan(p: Prepared, store: ActivationStore, trial: TrialSpec, sel: Selection,
              scores: dict[str, list[float]], run_scores: dict[str, float], info: dict[str, Any]) -> PrunePlan:
    return PrunePlan(
        model_id=p.resolved.name,
        revision=p.resolved.revision,
        n_blocks=p.n_layers,
        blocks=sel.blocks,
        granularity=trial.granularity,  # type: ignore[arg-type]
        method=trial.method,
        estimator=trial.estimator,
        estimator_params=dict(trial.estimator_params),
        calibration=p.job.calibration,
        scores=scores,
        run_scores=run_scores,
        info={**{k: v for k, v in sel.info.items() if k != "trace"}, **info,
              "evaluations": sel.evaluations, "store": store.checksum},
    )


def measure_extras(model: Any, p: Prepared) -> dict[str, Any]:
    """Latency and generation samples, when the evaluation settings ask for them."""
    ev = p.job.evaluation
    out: dict[str, Any] = {}
    if ev.latency:
        from blockprune.evaluation.cost import measure_latency

        out["latency"] = measure_latency(model, p.tokenizer).to_dict()
    if ev.samples:
        from blockprune.evaluation.generation import generate_samples

        out["samples"] = generate_samples(model, p.tokenizer)
    return out


def evaluate_model(model: Any, p: Prepared, progress: bool = True) -> tuple[dict[str, float], dict[str, dict]]:
    """Perplexity (and lm-eval tasks when asked) of one model."""
    from blockprune.evaluation.cost import count_parameters
    from blockprune.evaluation.perplexity import chunk_perplexity

    ev = p.job.evaluation
    t0 = time.perf_counter()
    ppl = chunk_perplexity(model, p.eval_windows, batch_size=ev.batch_size, progress=progress)
    params = count_parameters(model)
    metrics = {
        "ppl": ppl.perplexity,
        "nll": ppl.nll,
        "eval_tokens": ppl.n_tokens,
        "params_total": params["total"],
        "params_per_token": params["per_token"],
    }
    if ev.rolling_docs:
        from blockprune.calibration.windows import split_documents
        from blockprune.evaluation.perplexity import rolling_perplexity

        held = split_documents(load_corpus(p.eval_corpus, p.job.text_field))[1][: ev.rolling_docs]
        roll = rolling_perplexity(model, p.tokenizer, held, batch_size=ev.batch_size)
        metrics |= {"rolling.word_perplexity": roll.word_perplexity, "rolling.byte_perplexity": roll.byte_perplexity,
                    "rolling.bits_per_byte": roll.bits_per_byte}
    tasks: dict[str, dict] = {}
    if ev.tasks:
        from blockprune.evaluation.lm_eval_tasks import run_lm_eval

        tasks = run_lm_eval(model, p.tokenizer, list(ev.tasks), limit=ev.limit, batch_size=ev.batch_size)
        for task, vals in tasks.items():
            for k, v in vals.items():
                if isinstance(v, (int, float)):
                    metrics[f"{task}.{k}"] = float(v)
    metrics["eval_seconds"] = time.perf_counter() - t0
    return metrics, tasks


def run_job(job: JobConfig, tracker: Tracker | None = None, progress: bool = True,
            run_scorer: RunScorerFactory = _default_run_scorer, job_name: str | None = None,
            echo: Callable[[str], None] = print) -> list[TrialResult]:
    """Run every trial of a job on one model; one parent MLflow run, one child run per trial."""
    tracker = tracker or Tracker(enabled=False)
    tracker.check()
    t_start = time.perf_counter()
    p = prepare(job)
    echo(f"[blockprune] {p.resolved.name}: {p.n_layers} layers ({p.adapter.family}); calibration "
         f"{job.calibration.n_samples}×{job.calibration.seq_len} tokens of {job.calibration.corpus!r}")
    model, _, _ = load_model(job.model, dtype=job.dtype, device_map=job.device_map)
    results: list[TrialResult] = []
    job_params = {"model": p.resolved.name, "revision": p.resolved.revision,
                  "calibration": asdict(job.calibration), "capture": asdict(job.capture),
                  "evaluation": asdict(job.evaluation), "n_trials": len(job.trials)}
    with tracker.run(job_name or f"{p.resolved.name}", params=job_params,
                     tags={"blockprune.kind": "job", "model": p.resolved.name,
                           "model_revision": p.resolved.revision}) as parent_id:
        t0 = time.perf_counter()
        store, reused = capture_or_reuse(p, model, progress)
        capture_s = 0.0 if reused else time.perf_counter() - t0
        echo(f"[blockprune] activation store {'reused' if reused else 'captured'}: {store.path} "
             f"({store.n_rows} sampled tokens × {store.n_layers + 1} boundaries)")
        dense, dense_tasks = evaluate_model(model, p, progress)
        for k, v in (measure_extras(model, p).get("latency") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                dense[f"latency.{k}"] = v
        echo(f"[blockprune] dense perplexity on held-out {p.eval_corpus!r}: {dense['ppl']:.3f}")
        tracker.log_metrics({f"dense.{k}": v for k, v in dense.items()} | {"capture_seconds": capture_s,
                            "tokens_calibrated": store.manifest["tokens_calibrated"]})
        tracker.set_tags({"store_checksum": store.checksum, "store_reused": reused})
        for trial in job.trials:
            results.append(_run_trial(p, model, store, trial, dense, capture_s, tracker, run_scorer, progress, echo,
                                      multi=len(job.trials) > 1))
        log_job_summary(tracker, results)
        tracker.log_metrics({"job_seconds": time.perf_counter() - t_start})
    echo(f"[blockprune] MLflow: {tracker.describe(parent_id)}")
    return results


def trial_record(p: Prepared, store: ActivationStore, trial: TrialSpec, dense: Mapping[str, float],
                 metrics: Mapping[str, float], exact_scores: int, select_s: float,
                 capture_s: float) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(metrics, params, tags) of a trial's MLflow run: the same record from the local and the Ray path."""
    out = {
        "ppl_dense": dense["ppl"], "ppl_pruned": metrics["ppl"], "ppl_ratio": metrics["ppl"] / dense["ppl"],
        "params_removed": dense["params_total"] - metrics["params_total"],
        "params_removed_frac": 1 - metrics["params_total"] / dense["params_total"],
        "exact_scores": exact_scores, "scoring_selection_seconds": select_s, "capture_seconds": capture_s,
        "tokens_calibrated": store.manifest["tokens_calibrated"],
    } | {f"pruned.{k}": v for k, v in metrics.items()}
    params = {"model": p.resolved.name, "revision": p.resolved.revision, "calibration": asdict(p.job.calibration),
              "method": trial.method, "estimator": trial.estimator or "none",
              "estimator_params": trial.estimator_params, "granularity": trial.granularity,
              "n_prune": trial.n_prune, "s_start": trial.s_start, "capture": asdict(p.job.capture)}
    tags = {"blockprune.kind": "trial", "model": p.resolved.name, "store_checksum": store.checksum,
            "model_revision": p.resolved.revision}
    return out, params, tags


def _run_trial(p: Prepared, model: Any, store: ActivationStore, trial: TrialSpec, dense: dict[str, float],
               capture_s: float, tracker: Tracker, run_scorer: RunScorerFactory, progress: bool,
               echo: Callable[[str], None], multi: bool) -> TrialResult:
    from blockprune.models.apply import apply_plan, save_pruned

    t0 = time.perf_counter()
    sel, scores, run_scores, info = score_and_select(store, trial, run_scorer)
    select_s = time.perf_counter() - t0
    plan = make_plan(p, store, trial, sel, scores, run_scores, info)
    pruned = copy.deepcopy(model) if multi else model
    apply_plan(pruned, plan)
    metrics, tasks = evaluate_model(pruned, p, progress)
    extras = measure_extras(pruned, p)
    for k, v in (extras.get("latency") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[f"latency.{k}"] = v
    out, params, tags = trial_record(p, store, trial, dense, metrics, sel.evaluations, select_s, capture_s)
    result = TrialResult(trial, plan, out, tasks)
    with tracker.run(trial.name, params=params, nested=True, tags=tags) as run_id:
        result.run_id = run_id
        tracker.log_metrics(out)
        log_trial(tracker, plan, out, tasks=tasks, latency=extras.get("latency"), samples=extras.get("samples"))
        if p.job.save_dir:
            dest = Path(p.job.save_dir) / f"{p.resolved.name}-{trial.method}-{trial.granularity}-{trial.n_prune}"
            save_pruned(pruned, plan, dest, p.tokenizer)
            result.saved_to = str(dest)
            tracker.set_tags({"saved_to": dest})
    echo(f"[blockprune] {trial.name}: drop {trial.granularity}s {list(plan.blocks)} · perplexity "
         f"{dense['ppl']:.3f} → {metrics['ppl']:.3f} (×{out['ppl_ratio']:.2f}) · "
         f"{out['params_removed'] / 1e6:.1f} M params removed · {sel.evaluations} exact scores")
    return result
