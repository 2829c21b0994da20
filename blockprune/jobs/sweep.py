"""``blockprune sweep`` / ``python -m blockprune.jobs.sweep``: many models × calibrations × trials on Ray.

A spec (YAML or JSON) lists models, calibration settings and trials (explicitly, or as a grid of
methods × estimators × n_prune × granularity). Each (model, calibration) pair is one job: one
capture (or a reused store), many scorings of it, one MLflow parent run with a child run per
trial; every run carries the sweep name/id and the Ray job id as tags. Jobs run concurrently;
their model actors queue on GPU resources; a failed job is reported and does not stop the
others. The exit code is 0 only when every job succeeded (1 when some failed, 2 for bad input),
so ``ray job submit`` reports SUCCEEDED exactly when the whole sweep did.

The whole spec is validated (models, corpora, methods, estimators, block counts, GPU requests)
before any actor starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockprune.env import apply_env_defaults
from blockprune.errors import BadInputError

apply_env_defaults()

# light imports only: `blockprune --help` imports every sub-command module (torch comes later)
from blockprune.distributed.model_actor import ActorPlacement  # noqa: E402
from blockprune.distributed.scoring import ScoringOptions  # noqa: E402
from blockprune.selection.plan import CalibrationSettings  # noqa: E402

if TYPE_CHECKING:
    from blockprune.calibration.capture import CaptureSettings
    from blockprune.jobs.config import EvalSettings, JobConfig, TrialSpec

log = logging.getLogger(__name__)

EPILOG = """examples:
  python -m blockprune.jobs.sweep --spec blockprune/jobs/configs/sweep-smoke.yaml
  python -m blockprune.jobs.sweep --spec sweep.yaml --address 10.0.0.1:6379 --store-uri /shared/stores
  ray job submit --working-dir . -- python -m blockprune.jobs.sweep --spec blockprune/jobs/configs/sweep-paper.yaml

spec keys: name, models, calibration, capture, methods, estimators, estimator_params, n_prune,
           granularity, trials, evaluation, placement, scoring, dtype, store_root, save_dir,
           tracking {uri, experiment, enabled}, max_concurrent_jobs
"""

SPEC_KEYS = {"name", "models", "calibration", "capture", "methods", "estimators", "estimator_params", "n_prune",
             "granularity", "trials", "evaluation", "placement", "scoring", "dtype", "store_root", "save_dir",
             "tracking", "max_concurrent_jobs", "text_field"}
CALIBRATION_KEYS = {f.name for f in fields(CalibrationSettings)} | {"capture", "text_field"}
MODEL_KEYS = {"name", "dtype"} | {f.name for f in fields(ActorPlacement)}
TRACKING_KEYS = {"uri", "experiment", "enabled"}
CALIBRATION_DEFAULTS = {"n_samples": 32, "seq_len": 256, "seed": 0}  # the `blockprune calibrate` defaults


class SpecError(BadInputError):
    """The sweep spec is malformed or names something that does not exist."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    dtype: str
    placement: ActorPlacement


@dataclass(frozen=True)
class CalibrationEntry:
    settings: CalibrationSettings
    capture: CaptureSettings
    text_field: str | None = None


@dataclass(frozen=True)
class TrackingSpec:
    uri: str | None = None
    experiment: str = "blockprune"
    enabled: bool = True


def _default_eval() -> Any:
    from blockprune.jobs.config import EvalSettings

    return EvalSettings()


def _keys(cls: Any) -> set[str]:
    return {f.name for f in fields(cls)}


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: jobs = models × calibrations, each with all trials."""

    name: str
    models: tuple[ModelEntry, ...]
    calibrations: tuple[CalibrationEntry, ...]
    trials: tuple[TrialSpec, ...]
    evaluation: EvalSettings = field(default_factory=_default_eval)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    store_root: str | None = None
    save_dir: str | None = None
    max_concurrent_jobs: int | None = None

    def jobs(self) -> list[tuple[str, JobConfig, ModelEntry]]:
        """(job name, JobConfig, model entry) for every model × calibration."""
        from blockprune.jobs.config import JobConfig

        out = []
        for m in self.models:
            for c in self.calibrations:
                cal = c.settings
                name = f"{m.name}@{cal.corpus}:{cal.n_samples}x{cal.seq_len}:s{cal.seed}"
                job = JobConfig(model=m.name, calibration=cal, trials=self.trials, capture=c.capture,
                                evaluation=self.evaluation, dtype=m.dtype, store_root=self.store_root,
                                save_dir=self.save_dir, text_field=c.text_field)
                out.append((name, job, m))
        return out


# ------------------------------------------------------------------------------------ parsing


def _check_keys(d: Any, allowed: set[str], where: str) -> dict[str, Any]:
    from blockprune.jobs.config import check_keys

    return check_keys(d, allowed, where, SpecError)


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _build(cls: Any, d: dict[str, Any], where: str) -> Any:
    try:
        return cls(**d)
    except TypeError as e:
        raise SpecError(f"{where}: {e}") from None


def _placement(d: dict[str, Any], where: str) -> ActorPlacement:
    d = dict(d)
    if d.get("num_gpus") in ("auto", None):
        d["num_gpus"] = None
    elif not isinstance(d["num_gpus"], int) or isinstance(d["num_gpus"], bool):
        raise SpecError(f"{where}: num_gpus must be an integer or 'auto', got {d['num_gpus']!r}")
    return _build(ActorPlacement, d, where)


def compatible_estimators(method: str, estimators: list[str]) -> list[str | None]:
    """Which of the listed estimators a method can use (its default when none fits)."""
    from blockprune.jobs.config import DEFAULT_ESTIMATOR

    default = DEFAULT_ESTIMATOR.get(method)
    if default is None:
        return [None]
    prefix = default.split(".")[0] + "." if "." in default else default
    fit = [e for e in estimators if (e.startswith(prefix) if prefix.endswith(".") else e == prefix)]
    return list(fit) or [default]


def grid_trials(d: dict[str, Any]) -> list[TrialSpec]:
    from blockprune.jobs.config import RUN_METHODS, TrialSpec

    methods = [str(m) for m in _as_list(d.get("methods"))]
    if not methods:
        return []
    estimators = [str(e) for e in _as_list(d.get("estimators"))]
    est_params = d.get("estimator_params") or {}
    if not isinstance(est_params, dict):
        raise SpecError("estimator_params must map an estimator name to its parameters")
    n_prunes = _as_list(d.get("n_prune", 4))
    grans = [str(g) for g in _as_list(d.get("granularity", "layer"))]
    out = []
    for m in methods:
        for e in compatible_estimators(m, estimators):
            for n in n_prunes:
                for g in grans:
                    if g != "layer" and m in RUN_METHODS:
                        continue  # run methods score runs of whole layers
                    out.append(_build(TrialSpec, {"method": m, "n_prune": int(n), "granularity": g, "estimator": e,
                                                  "estimator_params": dict(est_params.get(e, {}) if e else {})},
                                      f"trial {m}/{e}"))
    return out


def parse_spec(d: dict[str, Any], name: str = "sweep") -> SweepSpec:
    """Structure and types of a spec (no model or registry look-ups; see :func:`validate_spec`)."""
    from blockprune.calibration.capture import CaptureSettings
    from blockprune.jobs.config import EvalSettings, TrialSpec

    d = _check_keys(d, SPEC_KEYS, "the sweep spec")
    default_placement = _check_keys(d.get("placement") or {}, _keys(ActorPlacement), "placement")
    dtype = d.get("dtype", "float32")
    models = []
    for i, m in enumerate(_as_list(d.get("models"))):
        m = {"name": m} if isinstance(m, str) else _check_keys(m, MODEL_KEYS, f"models[{i}]")
        if not m.get("name"):
            raise SpecError(f"models[{i}] needs a name")
        pl = {**default_placement, **{k: v for k, v in m.items() if k not in ("name", "dtype")}}
        models.append(ModelEntry(str(m["name"]), str(m.get("dtype", dtype)), _placement(pl, f"models[{i}]")))
    if not models:
        raise SpecError("the sweep spec lists no models")
    capture_default = _check_keys(d.get("capture") or {}, _keys(CaptureSettings), "capture")
    cals = []
    for i, c in enumerate(_as_list(d.get("calibration")) or [{"corpus": "wikipedia"}]):
        c = {"corpus": c} if isinstance(c, str) else _check_keys(c, CALIBRATION_KEYS, f"calibration[{i}]")
        cap = {**capture_default, **_check_keys(c.get("capture") or {}, _keys(CaptureSettings),
                                                f"calibration[{i}].capture")}
        cap.setdefault("seed", c.get("seed", 0))
        cal = {**CALIBRATION_DEFAULTS, **{k: v for k, v in c.items() if k not in ("capture", "text_field")}}
        settings = _build(CalibrationSettings, cal, f"calibration[{i}]")
        cals.append(CalibrationEntry(settings, _build(CaptureSettings, cap, f"calibration[{i}].capture"),
                                     c.get("text_field", d.get("text_field"))))
    trials = grid_trials(d)
    for i, t in enumerate(_as_list(d.get("trials"))):
        t = _check_keys(t, _keys(TrialSpec), f"trials[{i}]")
        trials.append(_build(TrialSpec, t, f"trials[{i}]"))
    if not trials:
        raise SpecError("the sweep spec has no trials: give 'methods' (a grid) or 'trials'")
    seen: set[str] = set()
    unique = []
    for t in trials:
        if t.name + json.dumps(t.estimator_params, sort_keys=True) not in seen:
            seen.add(t.name + json.dumps(t.estimator_params, sort_keys=True))
            unique.append(t)
    ev = d.get("evaluation") or {}
    ev = _check_keys(ev, _keys(EvalSettings), "evaluation")
    if "tasks" in ev:
        ev = {**ev, "tasks": tuple(_as_list(ev["tasks"]))}
    tracking = _check_keys(d.get("tracking") or {}, TRACKING_KEYS, "tracking")
    mcj = d.get("max_concurrent_jobs")
    if mcj is not None and (not isinstance(mcj, int) or mcj < 1):
        raise SpecError(f"max_concurrent_jobs must be a positive integer, got {mcj!r}")
    return SweepSpec(
        name=str(d.get("name", name)),
        models=tuple(models),
        calibrations=tuple(cals),
        trials=tuple(unique),
        evaluation=_build(EvalSettings, ev, "evaluation"),
        scoring=_build(ScoringOptions, _check_keys(d.get("scoring") or {}, _keys(ScoringOptions),
                                                   "scoring"), "scoring"),
        tracking=_build(TrackingSpec, tracking, "tracking"),
        store_root=d.get("store_root"),
        save_dir=d.get("save_dir"),
        max_concurrent_jobs=mcj,
    )


def load_spec(path: str | Path) -> SweepSpec:
    """Read a YAML or JSON spec file."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"sweep spec {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path} is not valid YAML/JSON: {e}") from None
    return parse_spec(data or {}, name=path.stem)


def validate_spec(spec: SweepSpec, resolve_models: bool = True) -> None:
    """Every check that needs no cluster: estimators, methods, corpora, models and their block counts."""
    from blockprune import estimators
    from blockprune.calibration.corpora import known_corpora
    from blockprune.jobs.runner import validate_trial
    from blockprune.selection import METHODS

    for t in spec.trials:
        METHODS.get(t.method)
        if t.estimator is not None:
            estimators.get(t.estimator)
    bundled = set(known_corpora())
    for corpus in [c.settings.corpus for c in spec.calibrations] + [spec.evaluation.corpus]:
        if corpus is not None and corpus not in bundled and not Path(corpus).exists():
            raise SpecError(f"unknown corpus {corpus!r}; known: {', '.join(known_corpora())}")
    if spec.evaluation.tasks:
        from blockprune.evaluation.lm_eval_tasks import resolve_task_names

        resolve_task_names(list(spec.evaluation.tasks))
    if not resolve_models:
        return
    from transformers import AutoConfig

    from blockprune.models.adapters import adapter_for_config
    from blockprune.models.zoo import resolve_model

    for m in spec.models:
        resolved = resolve_model(m.name)
        cfg = AutoConfig.from_pretrained(resolved.path)
        n_layers = adapter_for_config(cfg).n_layers(cfg)
        for t in spec.trials:
            try:
                validate_trial(t, n_layers)
            except ValueError as e:
                raise SpecError(f"model {m.name} ({n_layers} layers), trial {t.name}: {e}") from None


# ---------------------------------------------------------------------------------- running


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
    from blockprune.distributed.cluster import cluster_info
    from blockprune.distributed.model_actor import resolve_num_gpus
    from blockprune.distributed.pipeline import (
        DistributedSettings,
        JobOutcome,
        check_scoring_capacity,
        run_distributed_job,
    )
    from blockprune.models.zoo import resolve_model
    from blockprune.tracking.tracker import Tracker

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

    def run_one(i: int) -> None:
        name, job, m = jobs[i]
        settings = DistributedSettings(replace(m.placement, num_gpus=gpus[m.name]), spec.scoring)
        try:
            run_distributed_job(job, tracker, settings, log_lock=log_lock, info=info, progress=progress,
                                echo=echo, job_name=name, tags=tags, outcome=outcomes[i])
        except Exception as e:  # noqa: BLE001 - one failed job must not stop the others
            outcomes[i].status = "FAILED"
            outcomes[i].error = f"{type(e).__name__}: {e}"
            echo(f"[blockprune] {name}: FAILED: {outcomes[i].error}")
            log.debug("job %s failed:\n%s", name, traceback.format_exc())

    workers = max_concurrent_jobs or spec.max_concurrent_jobs or len(jobs)
    cap = concurrency_cap(spec, info.total_cpus)
    if cap < workers:
        echo(f"[blockprune] running at most {cap} job(s) at once: more model actors would hold every CPU "
             "and leave none for scoring tasks")
        workers = cap
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="blockprune-job") as pool:
        list(pool.map(run_one, range(len(jobs))))
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


def summary_rows(result: SweepResult) -> list[dict[str, Any]]:
    rows = []
    for o in result.outcomes:
        base = {"job": o.name, "status": o.status, "gpus": o.num_gpus,
                "store": "-" if o.store_reused is None else ("reused" if o.store_reused else "captured"),
                "capture_s": round(o.capture_seconds, 1), "job_s": round(o.seconds, 1)}
        if not o.results:
            rows.append({**base, "trial": "-", "blocks": "-", "ppl": "-", "exact": "-", "error": o.error or ""})
        for r in o.results:
            m = r.metrics
            rows.append({**base, "trial": r.trial.name, "blocks": ",".join(map(str, r.plan.blocks)),
                         "ppl": f"{m['ppl_dense']:.2f}→{m['ppl_pruned']:.2f}", "exact": m.get("exact_scores"),
                         "run_id": r.run_id, "error": ""})
    return rows


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


SUMMARY_COLUMNS = ("job", "status", "gpus", "store", "capture_s", "trial", "blocks", "ppl", "exact", "job_s", "error")


# --------------------------------------------------------------------------------------- CLI


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="blockprune sweep", description=__doc__, epilog=EPILOG,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="sweep spec (YAML or JSON)")
    p.add_argument("--address", default=None,
                   help="Ray cluster (host:6379 or ray://host:10001); default: $RAY_ADDRESS, else a local cluster")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster started here")
    p.add_argument("--store-uri", "--store-root", dest="store_uri", default=None,
                   help="where activation stores live; on a multi-node cluster a path every node and the driver see")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: spec, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: spec or 'blockprune')")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--engine", choices=("accelerate", "deepspeed"), default=None, help="capture engine (default: spec)")
    p.add_argument("--max-concurrent", type=int, default=None, help="jobs run at once (default: all; actors queue on GPUs)")
    p.add_argument("--summary-json", default=None, help="write the summary rows here")
    p.add_argument("--dry-run", action="store_true", help="validate the spec and list the jobs; start nothing")
    p.add_argument("--progress", action="store_true", help="progress bars in the actors' logs")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


def apply_overrides(spec: SweepSpec, args: argparse.Namespace) -> SweepSpec:
    if args.store_uri:
        spec = replace(spec, store_root=args.store_uri)
    tracking = spec.tracking
    if args.tracking_uri:
        tracking = replace(tracking, uri=args.tracking_uri)
    if args.experiment:
        tracking = replace(tracking, experiment=args.experiment)
    if args.no_tracking:
        tracking = replace(tracking, enabled=False)
    spec = replace(spec, tracking=tracking)
    if args.engine:
        spec = replace(spec, models=tuple(replace(m, placement=replace(m.placement, engine=args.engine))
                                          for m in spec.models))
    return spec


def run(args: argparse.Namespace) -> int:
    """Validate, connect, run, summarise; 0 only when every job succeeded (1: some failed, 2: bad input)."""
    from blockprune.distributed.cluster import connect, shutdown

    try:
        spec = apply_overrides(load_spec(args.spec), args)
        validate_spec(spec)
        if args.dry_run:
            for name, job, m in spec.jobs():
                print(json.dumps({"job": name, "trials": [t.name for t in job.trials],
                                  "placement": asdict(m.placement)}))
            return 0
        connect(args.address, num_cpus=args.num_cpus)
    except OSError as e:  # unreachable cluster, hub or file: as clean as the entry wrapper's errors
        print(f"blockprune: error: {e}", file=sys.stderr)
        return 2
    try:
        result = run_sweep(spec, progress=args.progress, max_concurrent_jobs=args.max_concurrent)
        rows = summary_rows(result)
        print(f"\n[blockprune] sweep {result.name!r} ({result.sweep_id}) summary")
        print(format_table(rows, SUMMARY_COLUMNS))
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps({"sweep": result.name, "sweep_id": result.sweep_id,
                                                           "ok": result.ok, "rows": rows}, indent=1, default=str))
        failed = [o.name for o in result.outcomes if o.status != "SUCCEEDED"]
        if failed:
            print(f"blockprune: {len(failed)} of {len(result.outcomes)} job(s) failed: {', '.join(failed)}",
                  file=sys.stderr)
            return 1
        return 0
    finally:
        shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    from blockprune.jobs.entry import run_entry

    return run_entry(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
