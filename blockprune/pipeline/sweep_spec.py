"""A sweep spec: models × calibrations × trials, in the shared configuration schema, validated up front.

The whole spec is checked (models and their block counts, corpora, methods, estimators and their
parameters, lm-eval tasks) before any actor starts; GPU requests are checked against the cluster by the
scheduler (:mod:`blockprune.distributed.sweep`) before the first job starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockprune.calibration.corpora import known_corpora
from blockprune.evaluation.lm_eval_tasks import resolve_task_names
from blockprune.healing.config import HealConfig
from blockprune.models.adapters import adapter_for_config
from blockprune.models.zoo import resolve_model
from blockprune.pipeline.config import (
    ActorPlacement,
    CalibrationEntry,
    EvalSettings,
    JobConfig,
    ScoringOptions,
    SpecError,
    TrackingSpec,
    TrialSpec,
    as_list,
    build,
    check_keys,
    keys_of,
    parse_calibration,
    parse_capture,
    parse_evaluation,
    parse_heal,
    parse_placement,
    parse_tracking,
    parse_trials,
    read_yaml,
)
from blockprune.selection import METHODS

SPEC_KEYS = {"name", "models", "calibration", "capture", "methods", "estimators", "estimator_params", "n_prune",
             "granularity", "trials", "evaluation", "placement", "scoring", "dtype", "store_root", "save_dir",
             "tracking", "max_concurrent_jobs", "text_field", "heal"}
MODEL_KEYS = {"name", "dtype"} | keys_of(ActorPlacement)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    dtype: str
    placement: ActorPlacement


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: jobs = models × calibrations, each with all trials."""

    name: str
    models: tuple[ModelEntry, ...]
    calibrations: tuple[CalibrationEntry, ...]
    trials: tuple[TrialSpec, ...]
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    store_root: str | None = None
    save_dir: str | None = None
    max_concurrent_jobs: int | None = None
    heal: HealConfig | None = None

    def jobs(self) -> list[tuple[str, JobConfig, ModelEntry]]:
        """(job name, JobConfig, model entry) for every model × calibration."""
        out = []
        for m in self.models:
            for c in self.calibrations:
                cal = c.settings
                name = f"{m.name}@{cal.corpus}:{cal.n_samples}x{cal.seq_len}:s{cal.seed}"
                job = JobConfig(model=m.name, calibration=cal, trials=self.trials, capture=c.capture,
                                evaluation=self.evaluation, dtype=m.dtype, store_root=self.store_root,
                                save_dir=self.save_dir, text_field=c.text_field, heal=self.heal)
                out.append((name, job, m))
        return out


def parse_spec(d: dict[str, Any], name: str = "sweep") -> SweepSpec:
    """Structure and types of a spec (no model or registry look-ups; see :func:`validate_spec`)."""
    d = check_keys(d, SPEC_KEYS, "the sweep spec")
    default_placement = check_keys(d.get("placement") or {}, keys_of(ActorPlacement), "placement")
    dtype = d.get("dtype", "float32")
    models = []
    for i, m in enumerate(as_list(d.get("models"))):
        m = {"name": m} if isinstance(m, str) else check_keys(m, MODEL_KEYS, f"models[{i}]")
        if not m.get("name"):
            raise SpecError(f"models[{i}] needs a name")
        pl = {**default_placement, **{k: v for k, v in m.items() if k not in ("name", "dtype")}}
        models.append(ModelEntry(str(m["name"]), str(m.get("dtype", dtype)), parse_placement(pl, f"models[{i}]")))
    if not models:
        raise SpecError("the sweep spec lists no models")
    capture_default = parse_capture(d.get("capture"))
    cals = [parse_calibration(c, capture_default, d.get("text_field"), f"calibration[{i}]")
            for i, c in enumerate(as_list(d.get("calibration")) or [{"corpus": "wikipedia"}])]
    trials = parse_trials(d, "the sweep spec")
    if not trials:
        raise SpecError("the sweep spec has no trials: give 'methods' (a grid) or 'trials'")
    mcj = d.get("max_concurrent_jobs")
    if mcj is not None and (not isinstance(mcj, int) or mcj < 1):
        raise SpecError(f"max_concurrent_jobs must be a positive integer, got {mcj!r}")
    return SweepSpec(
        name=str(d.get("name", name)),
        models=tuple(models),
        calibrations=tuple(cals),
        trials=trials,
        evaluation=parse_evaluation(d.get("evaluation")),
        scoring=build(ScoringOptions, check_keys(d.get("scoring") or {}, keys_of(ScoringOptions), "scoring"),
                      "scoring"),
        tracking=parse_tracking(d.get("tracking")),
        store_root=d.get("store_root"),
        save_dir=d.get("save_dir"),
        max_concurrent_jobs=mcj,
        heal=parse_heal(d.get("heal")),
    )


def load_spec(path: str | Path) -> SweepSpec:
    """Read a YAML or JSON spec file."""
    return parse_spec(read_yaml(path, "sweep spec"), name=Path(path).stem)


def validate_spec(spec: SweepSpec, resolve_models: bool = True) -> None:
    """Every check that needs no cluster: estimators, methods, corpora, models and their block counts."""
    from blockprune import estimators

    for t in spec.trials:
        METHODS.get(t.method)
        if t.estimator is not None:
            estimators.get(t.estimator).check_params(t.estimator_params)
    bundled = set(known_corpora())
    for corpus in [c.settings.corpus for c in spec.calibrations] + [spec.evaluation.corpus]:
        if corpus is not None and corpus not in bundled and not Path(corpus).exists():
            raise SpecError(f"unknown corpus {corpus!r}; known: {', '.join(known_corpora())}")
    if spec.evaluation.tasks:

        resolve_task_names(list(spec.evaluation.tasks))
    if not resolve_models:
        return
    from transformers import AutoConfig

    from blockprune.pipeline.prepare import validate_trial

    for m in spec.models:
        resolved = resolve_model(m.name)
        cfg = AutoConfig.from_pretrained(resolved.path)
        n_layers = adapter_for_config(cfg).n_layers(cfg)
        for t in spec.trials:
            try:
                validate_trial(t, n_layers)
            except ValueError as e:
                raise SpecError(f"model {m.name} ({n_layers} layers), trial {t.name}: {e}") from None
