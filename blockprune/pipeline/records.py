"""What a job and each of its trials log to MLflow: one definition, so every backend logs the same record."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from blockprune.calibration.store import ActivationStore
from blockprune.pipeline.config import TrialSpec
from blockprune.pipeline.prepare import Prepared
from blockprune.selection.plan import PrunePlan


@dataclass
class TrialResult:
    """One trial's plan, its logged metrics, lm-eval results, MLflow run and saved folder."""

    trial: TrialSpec
    plan: PrunePlan
    metrics: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str | None = None
    saved_to: str | None = None
    healed: dict[str, Any] | None = None  # the healing's summary (HealResult.to_dict()) when the job heals


def job_params(p: Prepared, engine: str, engine_settings: Mapping[str, Any]) -> dict[str, Any]:
    """The job (parent) run's params. Backend-specific settings travel as one JSON string, so every
    backend logs the same keys."""
    job = p.job
    return {"model": p.resolved.name, "revision": p.resolved.revision, "calibration": asdict(job.calibration),
            "capture": asdict(job.capture), "evaluation": asdict(job.evaluation), "n_trials": len(job.trials),
            "engine": engine, "engine_settings": json.dumps(dict(engine_settings), sort_keys=True, default=str)}


def job_tags(p: Prepared, engine_tags: Mapping[str, str]) -> dict[str, str]:
    return {"blockprune.kind": "job", "model": p.resolved.name, "model_revision": str(p.resolved.revision),
            **engine_tags}


def store_tags(store: ActivationStore, reused: bool) -> dict[str, Any]:
    """The store's id and fate; ``store_dtype`` is what the manifest records (float32 after a float16 overflow),
    and ``store_notes`` (e.g. ``store_replaced_corrupt``, ``store_dtype_fallback``) say what happened to it."""
    dtype = store.manifest.get("settings", {}).get("store_dtype", "")
    return {"store_checksum": store.checksum, "store_reused": reused, "store_path": store.path,
            "store_dtype": dtype, **store.notes}


def trial_record(p: Prepared, store: ActivationStore, trial: TrialSpec, dense: Mapping[str, float],
                 metrics: Mapping[str, float], exact_scores: int, select_s: float, capture_s: float,
                 scores_computed: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(metrics, params, tags) of a trial's MLflow run."""
    out = {
        "ppl_dense": dense["ppl"], "ppl_pruned": metrics["ppl"], "ppl_ratio": metrics["ppl"] / dense["ppl"],
        "params_removed": dense["params_total"] - metrics["params_total"],
        "params_removed_frac": 1 - metrics["params_total"] / dense["params_total"],
        "exact_scores": exact_scores, "scores_computed": scores_computed,
        "scoring_selection_seconds": select_s, "capture_seconds": capture_s,
        "tokens_calibrated": store.manifest["tokens_calibrated"],
    } | {f"pruned.{k}": v for k, v in metrics.items()}
    params = {"model": p.resolved.name, "revision": p.resolved.revision, "calibration": asdict(p.job.calibration),
              "method": trial.method, "estimator": trial.estimator or "none",
              "estimator_params": trial.estimator_params, "granularity": trial.granularity,
              "n_prune": trial.n_prune, "s_start": trial.s_start,
              "stage_rule": trial.stage_rule, "capture": asdict(p.job.capture)}
    tags = {"blockprune.kind": "trial", "model": p.resolved.name, "store_checksum": store.checksum,
            "model_revision": str(p.resolved.revision)}
    return out, params, tags
