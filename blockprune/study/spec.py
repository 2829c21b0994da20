"""The results study's grid: models × calibrations × methods × block counts, and what to evaluate.

A study is one YAML file (``blockprune/jobs/configs/study.yaml`` is the project's own table,
``study-quick.yaml`` its small twin). Everything is checked here, before any model loads: unknown
keys, methods, estimators, block counts against each model's depth, corpora, lm-eval task names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.settings import CaptureSettings, key_settings
from blockprune.errors import BadInputError
from blockprune.evaluation.lm_eval_tasks import resolve_task_names
from blockprune.models.adapters import adapter_for_config
from blockprune.models.zoo import resolve_model
from blockprune.pipeline.config import TrialSpec, check_keys
from blockprune.selection.methods import METHODS
from blockprune.selection.plan import CalibrationSettings
from blockprune.study.record import method_id

SPEC_KEYS = {"name", "quick", "models", "calibration", "capture", "methods", "evaluation", "tracking", "dtype",
             "store_root"}
MODEL_KEYS = {"layer", "attention", "capture"}
CAL_KEYS = {"corpora", "seeds", "n_samples", "seq_len"}
EVAL_KEYS = {"corpora", "windows", "seq_len", "batch_size", "tasks", "lm_eval_scope", "lm_eval_dtype"}
SCOPES = ("all", "reference")
LM_EVAL_DTYPES = ("float32", "bfloat16", "float16")


class StudySpecError(BadInputError):
    """The study spec is malformed or names something that does not exist."""


def _default_estimator(method: str) -> str | None:
    """The method's own default; an unknown method is reported by :func:`validate` with the known names."""
    return METHODS.get(method).default_estimator if method in METHODS else None


@dataclass(frozen=True)
class MethodRef:
    """``method``, ``method/estimator``, or ``{method: …, estimator: …, params: {…}, stage_rule: …}`` as written
    in the spec (``stage_rule``: EntroDrop's, "fixed" by default)."""

    method: str
    estimator: str | None
    params: tuple[tuple[str, Any], ...] = ()
    stage_rule: str | None = None

    @classmethod
    def parse(cls, item: Any) -> MethodRef:
        if isinstance(item, dict):
            item = _keys(item, {"method", "estimator", "params", "stage_rule"}, f"method {item}")
            params = _keys(item.get("params") or {}, set(item.get("params") or {}), "params")
            method = str(item.get("method", ""))
            return cls(method, item.get("estimator") or _default_estimator(method), tuple(sorted(params.items())),
                       item.get("stage_rule"))
        method, _, est = str(item).partition("/")
        return cls(method, est or _default_estimator(method))

    @property
    def label(self) -> str:
        return method_id(self.method, self.estimator, dict(self.params))


@dataclass(frozen=True)
class ModelGrid:
    name: str
    layer: tuple[int, ...]
    attention: tuple[int, ...] = ()
    capture: tuple[tuple[str, Any], ...] = ()  # overrides of the study's capture settings (e.g. float32 store)


@dataclass(frozen=True)
class StudyEval:
    corpora: tuple[str, ...]
    windows: int = 16
    seq_len: int = 256
    batch_size: int = 8
    tasks: tuple[tuple[str, int | None], ...] = ()  # (task, limit); None = the full set
    lm_eval_scope: str = "all"  # "reference": lm-eval only on the reference calibration's plans
    lm_eval_dtype: str = "float32"  # autocast dtype of the lm-eval forward passes (log-softmax in float32)

    @property
    def docs_tag(self) -> str:
        """Which documents lm-eval scores: each task with its limit (the answer baselines' key)."""
        return ",".join(f"{t}:{lim or 'full'}" for t, lim in self.tasks)

    @property
    def tasks_tag(self) -> str:
        """What an evaluation run's lm-eval results were made with (its ``tasks_done`` tag)."""
        return self.docs_tag if self.lm_eval_dtype == "float32" else f"{self.docs_tag};{self.lm_eval_dtype}"


@dataclass(frozen=True)
class StudySpec:
    name: str
    models: tuple[ModelGrid, ...]
    corpora: tuple[str, ...]
    seeds: tuple[int, ...]
    n_samples: int
    seq_len: int
    capture: CaptureSettings
    layer_methods: tuple[MethodRef, ...]
    attention_methods: tuple[MethodRef, ...]
    evaluation: StudyEval
    experiment: str = "blockprune-study"
    quick: bool = False
    dtype: str = "float32"
    store_root: str | None = None  # default: $BLOCKPRUNE_CACHE/stores, shared with `blockprune calibrate`
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def fingerprint(self) -> str:
        """Identifies what every run's numbers depend on beyond its key (capture, evaluation, dtype): runs
        made under other settings are never mixed in, while growing the grid (models, methods, block counts,
        corpora, seeds: all part of the run keys) keeps every finished run. lm-eval's dtype is left out: it
        is in each run's ``tasks_done`` tag, so changing it redoes lm-eval and nothing else."""
        evaluation = asdict(self.evaluation)
        del evaluation["lm_eval_dtype"]
        payload = json.dumps({"capture": key_settings(self.capture), "evaluation": evaluation,
                              "dtype": self.dtype}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def capture_for(self, model: ModelGrid) -> CaptureSettings:
        return replace(self.capture, **dict(model.capture)) if model.capture else self.capture

    def calibrations(self) -> list[CalibrationSettings]:
        """Reference calibration first: the first corpus with the first seed."""
        return [CalibrationSettings(c, self.n_samples, self.seq_len, s) for s in self.seeds for c in self.corpora]

    def trials(self, model: ModelGrid) -> list[TrialSpec]:
        out = []
        for g, counts, methods in (("layer", model.layer, self.layer_methods),
                                   ("attention", model.attention, self.attention_methods)):
            for m in methods:
                for n in counts:
                    out.append(TrialSpec(method=m.method, n_prune=int(n), granularity=g, estimator=m.estimator,
                                         estimator_params=dict(m.params), stage_rule=m.stage_rule))
        return out

def _keys(d: Any, allowed: set[str], where: str) -> dict[str, Any]:
    return check_keys(d, allowed, where, StudySpecError)


def _ints(v: Any, where: str) -> tuple[int, ...]:
    vals = v if isinstance(v, list | tuple) else [v]
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        raise StudySpecError(f"{where} must be a list of integers, got {v!r}")
    return tuple(vals)


def _tasks(v: Any) -> tuple[tuple[str, int | None], ...]:
    if v is None:
        return ()
    if isinstance(v, list):
        return tuple((str(t), None) for t in v)
    if not isinstance(v, dict):
        raise StudySpecError("evaluation.tasks must map a task to its limit (null = full set) or list tasks")
    out = []
    for t, lim in v.items():
        if lim is not None and (not isinstance(lim, int) or isinstance(lim, bool) or lim < 1):
            raise StudySpecError(f"evaluation.tasks.{t}: limit must be a positive integer or null, got {lim!r}")
        out.append((str(t), lim))
    return tuple(out)


def parse_spec(d: dict[str, Any], source: str = "") -> StudySpec:
    """Structure and types only; :func:`validate` checks names against the registries and models."""
    d = _keys(d, SPEC_KEYS, "the study spec")
    models_raw = _keys(d.get("models") or {}, set(d.get("models") or {}), "models")
    if not models_raw:
        raise StudySpecError("the study spec lists no models")
    models = []
    for name, grid in models_raw.items():
        grid = _keys(grid or {}, MODEL_KEYS, f"models.{name}")
        if not grid.get("layer") and not grid.get("attention"):
            raise StudySpecError(f"models.{name} needs 'layer' and/or 'attention' block counts")
        cap = _keys(grid.get("capture") or {}, {f.name for f in fields(CaptureSettings)}, f"models.{name}.capture")
        models.append(ModelGrid(str(name), _ints(grid.get("layer", []), f"models.{name}.layer"),
                                _ints(grid.get("attention", []), f"models.{name}.attention"),
                                tuple(sorted(cap.items()))))
    cal = _keys(d.get("calibration") or {}, CAL_KEYS, "calibration")
    corpora = tuple(str(c) for c in (cal.get("corpora") or ["wikipedia"]))
    seeds = _ints(cal.get("seeds", [0]), "calibration.seeds")
    try:
        capture = CaptureSettings(**(d.get("capture") or {}))
    except (TypeError, ValueError) as e:
        raise StudySpecError(f"capture: {e}") from None
    methods = _keys(d.get("methods") or {}, {"layer", "attention"}, "methods")
    layer_m = tuple(MethodRef.parse(m) for m in methods.get("layer") or [])
    attn_m = tuple(MethodRef.parse(m) for m in methods.get("attention") or [])
    ev = _keys(d.get("evaluation") or {}, EVAL_KEYS, "evaluation")
    scope = ev.get("lm_eval_scope", "all")
    if scope not in SCOPES:
        raise StudySpecError(f"evaluation.lm_eval_scope must be one of {SCOPES}, got {scope!r}")
    lm_dtype = str(ev.get("lm_eval_dtype", "float32"))
    if lm_dtype not in LM_EVAL_DTYPES:
        raise StudySpecError(f"evaluation.lm_eval_dtype must be one of {LM_EVAL_DTYPES}, got {lm_dtype!r}")
    evaluation = StudyEval(corpora=tuple(str(c) for c in (ev.get("corpora") or corpora)),
                           windows=int(ev.get("windows", 16)), seq_len=int(ev.get("seq_len", 256)),
                           batch_size=int(ev.get("batch_size", 8)), tasks=_tasks(ev.get("tasks")),
                           lm_eval_scope=scope, lm_eval_dtype=lm_dtype)
    tracking = _keys(d.get("tracking") or {}, {"experiment"}, "tracking")
    try:
        spec = StudySpec(
            name=str(d.get("name", "study")), models=tuple(models), corpora=corpora, seeds=seeds,
            n_samples=int(cal.get("n_samples", 128)), seq_len=int(cal.get("seq_len", 256)), capture=capture,
            layer_methods=layer_m, attention_methods=attn_m, evaluation=evaluation,
            experiment=str(tracking.get("experiment", "blockprune-study")), quick=bool(d.get("quick", False)),
            dtype=str(d.get("dtype", "float32")), store_root=d.get("store_root"), source=source, raw=d,
        )
    except (TypeError, ValueError) as e:
        raise StudySpecError(str(e)) from None
    for m in spec.models:
        try:
            spec.capture_for(m)
        except (TypeError, ValueError) as e:
            raise StudySpecError(f"models.{m.name}.capture: {e}") from None
    return spec


def load_spec(path: str | Path) -> StudySpec:
    path = Path(path)
    if not path.exists():
        raise StudySpecError(f"study spec {path} does not exist")
    return parse_spec(yaml.safe_load(path.read_text()) or {}, source=str(path))


def validate(spec: StudySpec) -> dict[str, int]:
    """Every check that needs no forward pass; returns each model's number of layers."""
    from transformers import AutoConfig

    from blockprune.pipeline.prepare import validate_trial

    for c in dict.fromkeys(spec.corpora + spec.evaluation.corpora):
        load_corpus(c)
    if spec.evaluation.tasks:

        resolve_task_names([t for t, _ in spec.evaluation.tasks])
    depth = {}
    for m in spec.models:
        config = AutoConfig.from_pretrained(resolve_model(m.name).path)
        n_layers = adapter_for_config(config).n_layers(config)
        for t in spec.trials(m):
            validate_trial(t, n_layers)
        depth[m.name] = n_layers
    if not any(spec.trials(m) for m in spec.models):
        raise StudySpecError("the study spec has no trials: list methods.layer and/or methods.attention")
    return depth


def default_spec_path(quick: bool) -> Path:
    here = Path(__file__).resolve().parent.parent / "jobs" / "configs"
    return here / ("study-quick.yaml" if quick else "study.yaml")
