"""The configuration schema shared by ``calibrate``, ``sweep`` and the study: frozen, validated, torch-free.

A job is one model × one calibration × its trials; a sweep spec is models × calibrations with the same
sections; ``blockprune calibrate --config job.yaml`` reads a job in the same shape (one model, one
calibration). Every section is parsed by one function here, so a key means the same thing wherever it
is written. Importing this module loads neither torch nor Ray nor MLflow: ``--help`` and spec validation
stay instant.

Sections (YAML / JSON)::

    model / models      name, or {name, dtype, <placement keys>}
    calibration         corpus, n_samples, seq_len, seed, text_field, capture: {...}
    capture             sample_rows, store_dtype, capture_mid, batch_size, include_bos, seed, sampling
    methods / estimators / estimator_params / n_prune / granularity      a grid of trials
    trials              explicit trials: method, n_prune, granularity, estimator, estimator_params, s_start,
                        stage_rule
    evaluation          corpus, windows, seq_len, tasks, limit, batch_size, latency, samples, rolling_docs
    heal                LoRA healing of each trial's pruned model: steps, tokens, lr, rank, corpora, …
    placement, scoring  Ray model actors and scoring tasks (ignored by a local run)
    tracking            uri, experiment, enabled
    dtype, device_map, store_root, save_dir, text_field, streamed
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from blockprune.calibration.settings import CaptureSettings
from blockprune.errors import BadInputError
from blockprune.healing.config import HealConfig
from blockprune.selection.methods import METHODS
from blockprune.selection.plan import GRANULARITIES, CalibrationSettings

ENGINES = ("accelerate", "deepspeed")
DTYPES = ("float32", "bfloat16", "float16")


class SpecError(BadInputError):
    """A configuration file or section is malformed."""


def check_keys(d: Any, allowed: set[str], where: str, error: type[ValueError] = SpecError) -> dict[str, Any]:
    """A section must be a mapping with known keys only; the message lists the allowed ones."""
    if not isinstance(d, dict):
        raise error(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise error(f"unknown key(s) {unknown} in {where}; allowed: {', '.join(sorted(allowed))}")
    return d


def keys_of(cls: Any) -> set[str]:
    return {f.name for f in fields(cls)}


def build(cls: Any, d: Mapping[str, Any], where: str) -> Any:
    """``cls(**d)`` with a wrong type or value reported as a :class:`SpecError` naming the section."""
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise SpecError(f"{where}: {e}") from None


def as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return list(v) if isinstance(v, list | tuple) else [v]


# ---------------------------------------------------------------------------------------- trials


@dataclass(frozen=True)
class TrialSpec:
    """One selection to make from a capture: method × estimator × granularity × n_prune.

    The estimator defaults to the method's own (its spec's ``default_estimator``)."""

    method: str
    n_prune: int
    granularity: str = "layer"
    estimator: str | None = None
    estimator_params: dict[str, Any] = field(default_factory=dict)
    s_start: int | None = None
    stage_rule: str | None = None  # EntroDrop: "fixed" (blocks 0, 1, L−1 protected; the default) or "curve"

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise BadInputError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.estimator is None and self.method in METHODS:
            object.__setattr__(self, "estimator", METHODS.get(self.method).default_estimator)

    @property
    def name(self) -> str:
        est = f"/{self.estimator}" if self.estimator else ""
        return f"{self.method}{est}/{self.granularity}/k={self.n_prune}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compatible_estimators(method: str, estimators: list[str]) -> list[str | None]:
    """Which of the listed estimators a method can use (its default when none fits, None when it takes none)."""
    from blockprune import estimators as est

    spec = METHODS.get(method)
    if spec.default_estimator is None:
        return [None]
    # an unknown name is kept, so that validation reports it with the known ones
    fit = [e for e in estimators if e not in est.ESTIMATORS or est.get(e).kind == spec.estimator_kind]
    return fit or [spec.default_estimator]


def grid_trials(d: Mapping[str, Any], where: str = "the spec") -> list[TrialSpec]:
    """Trials of a grid section: methods × their compatible estimators × n_prune × granularity.

    Run methods (whole-layer runs) are skipped at other granularities, since they have no such form."""
    methods = [str(m) for m in as_list(d.get("methods"))]
    if not methods:
        return []
    names = [str(e) for e in as_list(d.get("estimators"))]
    est_params = d.get("estimator_params") or {}
    if not isinstance(est_params, dict):
        raise SpecError(f"estimator_params in {where} must map an estimator name to its parameters")
    n_prunes = as_list(d.get("n_prune", 4))
    grans = [str(g) for g in as_list(d.get("granularity", "layer"))]
    out = []
    for m in methods:
        layer_only = METHODS.get(m).layer_only if m in METHODS else False
        for e in compatible_estimators(m, names) if m in METHODS else [None]:
            for n in n_prunes:
                for g in grans:
                    if g != "layer" and layer_only:
                        continue
                    out.append(build(TrialSpec, {"method": m, "n_prune": int(n), "granularity": g, "estimator": e,
                                                 "estimator_params": dict(est_params.get(e, {}) if e else {})},
                                     f"trial {m}/{e}"))
    return out


def parse_trials(d: Mapping[str, Any], where: str = "the spec") -> tuple[TrialSpec, ...]:
    """Grid trials plus explicit ``trials``, duplicates dropped (first wins)."""
    trials = grid_trials(d, where)
    for i, t in enumerate(as_list(d.get("trials"))):
        t = check_keys(t, keys_of(TrialSpec), f"trials[{i}]")
        trials.append(build(TrialSpec, t, f"trials[{i}]"))
    seen: set[str] = set()
    unique = []
    for t in trials:
        key = t.name + json.dumps(t.estimator_params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(t)
    return tuple(unique)


# ----------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalSettings:
    """What to measure on every pruned model (and once on the dense one)."""

    corpus: str | None = None  # default: the calibration corpus (held-out split)
    windows: int = 16
    seq_len: int | None = None  # default: calibration seq_len
    tasks: tuple[str, ...] = ()
    limit: int | None = None
    batch_size: int = 4
    latency: bool = False  # prefill/decode tokens/s (adds tens of seconds per model on a CPU)
    samples: bool = False  # greedy generations for fixed prompts
    rolling_docs: int = 0  # >0: lm-eval-style rolling word/byte perplexity on this many held-out documents

    def __post_init__(self) -> None:
        if self.windows < 1 or self.batch_size < 1 or self.rolling_docs < 0:
            raise BadInputError("evaluation needs windows >= 1, batch_size >= 1 and rolling_docs >= 0")
        if self.limit is not None and self.limit < 1:
            raise BadInputError(f"evaluation limit must be >= 1, got {self.limit}")


def parse_evaluation(d: Any, where: str = "evaluation") -> EvalSettings:
    ev = check_keys(d or {}, keys_of(EvalSettings), where)
    if "tasks" in ev:
        tasks = ev["tasks"]
        ev = {**ev, "tasks": tuple(t for t in tasks.split(",") if t) if isinstance(tasks, str)
              else tuple(as_list(tasks))}
    return build(EvalSettings, ev, where)


# ---------------------------------------------------------------------------------- calibration

# the `blockprune calibrate` defaults, and those of a sweep's calibration entries
CALIBRATION_DEFAULTS = {"corpus": "wikipedia", "n_samples": 32, "seq_len": 256, "seed": 0}


@dataclass(frozen=True)
class CalibrationEntry:
    """One calibration of a spec: which tokens, what the store keeps, which text field."""

    settings: CalibrationSettings
    capture: CaptureSettings
    text_field: str | None = None


def parse_capture(d: Any, where: str = "capture") -> dict[str, Any]:
    return dict(check_keys(d or {}, keys_of(CaptureSettings), where))


def parse_calibration(c: Any, capture_default: Mapping[str, Any], text_field: str | None,
                      where: str = "calibration") -> CalibrationEntry:
    """A corpus name, or a mapping of calibration keys with an optional ``capture`` override.

    The capture seed follows the calibration seed unless the capture section sets its own."""
    c = {"corpus": c} if isinstance(c, str) else check_keys(c, keys_of(CalibrationSettings) | {"capture",
                                                                                               "text_field"}, where)
    cap = {**capture_default, **parse_capture(c.get("capture"), f"{where}.capture")}
    cap.setdefault("seed", c.get("seed", 0))
    cal = {**CALIBRATION_DEFAULTS, **{k: v for k, v in c.items() if k not in ("capture", "text_field")}}
    return CalibrationEntry(build(CalibrationSettings, cal, where), build(CaptureSettings, cap, f"{where}.capture"),
                            c.get("text_field", text_field))


# --------------------------------------------------------------------------------- Ray settings


@dataclass(frozen=True)
class ActorPlacement:
    """Where and how a model actor runs (Ray backend; a local run ignores it).

    ``num_gpus``: ``None`` = chosen from the model size (0 on a CPU-only cluster), or a fixed
    count. ``replicas``: data-parallel capture actors (each with ``num_gpus``); the windows are
    split between them. ``colocate``: put the (evaluation) actor and ``scorer_slots`` scoring
    bundles in one ``STRICT_PACK`` placement group, so scorers read the store's boundaries from
    the object store of the model's node.
    """

    num_gpus: int | None = None
    num_cpus: float = 1.0
    replicas: int = 1
    gpu_memory_gb: float | None = None  # per GPU; None = ask a GPU once (probe task)
    headroom: float = 0.15  # fraction of each GPU left free
    overhead: float = 1.2  # weights × overhead = memory the model needs
    max_restarts: int = 2
    colocate: bool = False
    scorer_slots: int = 1
    engine: str = "accelerate"

    def __post_init__(self) -> None:
        if self.num_gpus is not None and self.num_gpus < 0:
            raise BadInputError(f"num_gpus must be >= 0 or auto, got {self.num_gpus}")
        if self.replicas < 1:
            raise BadInputError(f"replicas must be >= 1, got {self.replicas}")
        if not 0.0 <= self.headroom < 1.0:
            raise BadInputError(f"headroom must be in [0, 1), got {self.headroom}")
        if self.overhead < 1.0:
            raise BadInputError(f"overhead must be >= 1, got {self.overhead}")
        if self.num_cpus < 0 or self.max_restarts < 0 or self.scorer_slots < 0:
            raise BadInputError("num_cpus, max_restarts and scorer_slots must be >= 0")
        if self.engine not in ENGINES:
            raise BadInputError(f"engine must be one of {ENGINES}, got {self.engine!r}")


@dataclass(frozen=True)
class ScoringOptions:
    """Resources and limits of scoring tasks (Ray backend).

    ``max_in_flight``: tasks submitted but not finished (``None`` = twice the CPU slots the
    cluster has for tasks of ``num_cpus``); bounds object-store pressure and driver memory.
    ``max_retries``: re-runs of a task whose worker died (``retry_exceptions`` also re-runs
    tasks that raised; off by default since an estimator error is deterministic).
    """

    num_cpus: float = 1.0
    max_in_flight: int | None = None
    max_retries: int = 3
    retry_exceptions: bool = False

    def __post_init__(self) -> None:
        if self.num_cpus <= 0:
            raise BadInputError(f"scoring num_cpus must be > 0, got {self.num_cpus}")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise BadInputError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.max_retries < 0:
            raise BadInputError(f"max_retries must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class DistributedSettings:
    """How a job uses the cluster: its model actors and its scoring tasks."""

    placement: ActorPlacement = field(default_factory=ActorPlacement)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)


def parse_placement(d: Mapping[str, Any], where: str) -> ActorPlacement:
    d = dict(check_keys(dict(d), keys_of(ActorPlacement), where))
    if d.get("num_gpus") in ("auto", None):
        d["num_gpus"] = None
    elif not isinstance(d["num_gpus"], int) or isinstance(d["num_gpus"], bool):
        raise SpecError(f"{where}: num_gpus must be an integer or 'auto', got {d['num_gpus']!r}")
    return build(ActorPlacement, d, where)


# ------------------------------------------------------------------------------------- tracking


@dataclass(frozen=True)
class TrackingSpec:
    uri: str | None = None
    experiment: str = "blockprune"
    enabled: bool = True


def parse_tracking(d: Any, where: str = "tracking") -> TrackingSpec:
    return build(TrackingSpec, check_keys(d or {}, keys_of(TrackingSpec), where), where)


# ------------------------------------------------------------------------------------------ job


@dataclass(frozen=True)
class JobConfig:
    """One model, one calibration, its trials: what ``calibrate`` runs and what each sweep job is."""

    model: str
    calibration: CalibrationSettings
    trials: tuple[TrialSpec, ...]
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    dtype: str = "float32"
    device_map: str | None = None
    store_root: str | None = None
    save_dir: str | None = None
    text_field: str | None = None
    heal: HealConfig | None = None  # LoRA healing of every trial's pruned model, after all trials are measured
    streamed: bool | None = None  # layer-streamed capture/perplexity: True, False, or None = when it does not fit

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise BadInputError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


JOB_KEYS = {"model", "calibration", "capture", "methods", "estimators", "estimator_params", "n_prune",
            "granularity", "trials", "evaluation", "dtype", "device_map", "store_root", "save_dir", "text_field",
            "tracking", "placement", "scoring", "heal", "streamed"}


def parse_heal(d: Any, where: str = "heal") -> HealConfig | None:
    """A ``heal:`` section (``{steps: 200, lr: 2e-4, rank: 16, corpora: [...]}``); absent or null = no healing."""
    if d is None or d is False:
        return None
    if d is True:
        d = {}
    try:
        return HealConfig.from_spec(check_keys(d, HealConfig.SPEC_KEYS, where))
    except (TypeError, ValueError) as e:
        raise SpecError(f"{where}: {e}") from None


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML/JSON mapping from a file, or a one-line error naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SpecError(f"{what} {path} is not valid YAML/JSON: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"{what} {path} must hold a mapping, got {type(data).__name__}")
    return data


def parse_job(d: Mapping[str, Any], where: str = "the job config") -> JobConfig:
    """A complete job from a mapping in the shared schema (``calibration`` may be a single corpus name)."""
    d = check_keys(dict(d), JOB_KEYS, where)
    if not d.get("model"):
        raise SpecError(f"{where} needs a model")
    model = d["model"]
    if not isinstance(model, str):
        raise SpecError(f"{where}: model must be a name or path, got {model!r}")
    capture = parse_capture(d.get("capture"))
    cal = parse_calibration(d.get("calibration") or {}, capture, d.get("text_field"))
    trials = parse_trials(d, where)
    if not trials:
        raise SpecError(f"{where} has no trials: give 'methods' (a grid) or 'trials'")
    return build(JobConfig, {
        "model": model, "calibration": cal.settings, "trials": trials, "capture": cal.capture,
        "evaluation": parse_evaluation(d.get("evaluation")), "dtype": d.get("dtype", "float32"),
        "device_map": d.get("device_map"), "store_root": d.get("store_root"), "save_dir": d.get("save_dir"),
        "text_field": cal.text_field, "heal": parse_heal(d.get("heal")), "streamed": d.get("streamed")}, where)
