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
from blockprune.healing.config import HealConfig
from blockprune.models.adapters import adapter_for_config
from blockprune.models.zoo import resolve_model
from blockprune.pipeline.config import TrialSpec, check_keys
from blockprune.selection.methods import METHODS
from blockprune.selection.plan import CalibrationSettings
from blockprune.study.record import method_id

SPEC_KEYS = {"name", "quick", "models", "calibration", "capture", "methods", "evaluation", "tracking", "dtype",
             "store_root", "heal", "report", "see_also", "compare_with"}
MODEL_KEYS = {"layer", "attention", "capture"}
CAL_KEYS = {"corpora", "seeds", "pairs", "n_samples", "seq_len"}
EVAL_KEYS = {"corpora", "windows", "seq_len", "batch_size", "tasks", "lm_eval_scope", "lm_eval_dtype",
             "replay_dense_prefix"}
SCOPES = ("all", "reference")
LM_EVAL_DTYPES = ("float32", "bfloat16", "float16")
HEAL_STUDY_KEYS = {"n_prune", "granularity", "keep_merged", "dense_reference"}  # the study's own keys of ``heal:``; the rest is HealConfig's


class StudySpecError(BadInputError):
    """The study spec is malformed or names something that does not exist."""


def _default_estimator(method: str) -> str | None:
    """The method's own default; an unknown method is reported by :func:`validate` with the known names."""
    return METHODS.get(method).default_estimator if method in METHODS else None


@dataclass(frozen=True)
class MethodRef:
    """``method``, ``method/estimator``, or ``{method: …, estimator: …, params: {…}, stage_rule: …, display: …}``
    as written in the spec (``stage_rule``: EntroDrop's, "fixed" by default; ``display``: how the report names
    the row, where the labels the specs give would not tell two variants apart)."""

    method: str
    estimator: str | None
    params: tuple[tuple[str, Any], ...] = ()
    stage_rule: str | None = None
    display: str | None = None

    @classmethod
    def parse(cls, item: Any) -> MethodRef:
        if isinstance(item, dict):
            item = _keys(item, {"method", "estimator", "params", "stage_rule", "display"}, f"method {item}")
            params = _keys(item.get("params") or {}, set(item.get("params") or {}), "params")
            method = str(item.get("method", ""))
            display = item.get("display")
            if display is not None and (not isinstance(display, str) or not display.strip()):
                raise StudySpecError(f"method {item}: display must be a non-empty string, got {display!r}")
            return cls(method, item.get("estimator") or _default_estimator(method), tuple(sorted(params.items())),
                       item.get("stage_rule"), display)
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
    replay_dense_prefix: bool = False  # start each plan at its first changed layer (blockprune.study.replay)

    @property
    def docs_tag(self) -> str:
        """Which documents lm-eval scores: each task with its limit (the answer baselines' key)."""
        return ",".join(f"{t}:{lim or 'full'}" for t, lim in self.tasks)

    @property
    def tasks_tag(self) -> str:
        """What an evaluation run's lm-eval results were made with (its ``tasks_done`` tag)."""
        return self.docs_tag if self.lm_eval_dtype == "float32" else f"{self.docs_tag};{self.lm_eval_dtype}"


@dataclass(frozen=True)
class StudyHeal:
    """The spec's ``heal:`` section: after evaluation, LoRA-heal the best reference plan (lowest ppl×) of each
    method family at each of ``n_prune`` blocks of ``granularity`` with ``config``. ``keep_merged``: keep the
    merged healed weights (GBs per plan) rather than only the adapter and ``heal.json``. ``dense_reference``:
    also LoRA-tune the dense model with the same budget, the like-for-like reference for healed plans (healing
    trains on the corpora the perplexity is measured on, so a healed plan can end below the untuned dense model)."""

    config: HealConfig
    n_prune: tuple[int, ...]
    granularity: str = "layer"
    keep_merged: bool = False
    dense_reference: bool = False


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
    pairs: tuple[tuple[str, int], ...] = ()  # explicit (corpus, seed) calibrations instead of corpora × seeds
    heal: StudyHeal | None = None  # not in the fingerprint: each heal run's key names its settings
    report: str | None = None  # the report's default path (None: docs/RESULTS.md or RESULTS-quick.md)
    see_also: tuple[str, ...] = ()  # other reports (paths from the checkout) the report's header links
    compare_with: tuple[str, str] | None = None  # (another report, its spec): "Compared with" section
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def fingerprint(self) -> str:
        """Identifies what every run's numbers depend on beyond its key (capture, evaluation, dtype): runs
        made under other settings are never mixed in, while growing the grid (models, methods, block counts,
        corpora, seeds: all part of the run keys) keeps every finished run. lm-eval's dtype is left out: it
        is in each run's ``tasks_done`` tag, so changing it redoes lm-eval and nothing else. Prefix replay is
        left out too: it changes only the time a plan takes."""
        evaluation = asdict(self.evaluation)
        del evaluation["lm_eval_dtype"], evaluation["replay_dense_prefix"]
        payload = json.dumps({"capture": key_settings(self.capture), "evaluation": evaluation,
                              "dtype": self.dtype}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    @property
    def display_names(self) -> dict[str, str]:
        """Method id → the name the spec gives its row (only the entries that set ``display``)."""
        return {m.label: m.display for m in self.layer_methods + self.attention_methods if m.display}

    def capture_for(self, model: ModelGrid) -> CaptureSettings:
        return replace(self.capture, **dict(model.capture)) if model.capture else self.capture

    def calibrations(self) -> list[CalibrationSettings]:
        """Reference calibration first: the first corpus with the first seed (or the first of ``pairs``)."""
        pairs = self.pairs or tuple((c, s) for s in self.seeds for c in self.corpora)
        return [CalibrationSettings(c, self.n_samples, self.seq_len, s) for c, s in pairs]

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


def _flag(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise StudySpecError(f"{where} must be true or false, got {v!r}")
    return v


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


def _heal(v: Any, evaluation: StudyEval) -> StudyHeal | None:
    """``heal:``: the study's keys (which plans) and HealConfig's short keys (how); held-out evaluation defaults
    to the study's corpora and window count, so before/after are measured on the windows the report uses."""
    if v is None:
        return None
    v = dict(_keys(v, HEAL_STUDY_KEYS | HealConfig.SPEC_KEYS, "heal"))
    n_prune = _ints(v.pop("n_prune", []), "heal.n_prune")
    if not n_prune:
        raise StudySpecError("heal.n_prune lists no block counts: which plans to heal (e.g. [6, 8])")
    granularity = str(v.pop("granularity", "layer"))
    if granularity not in ("layer", "attention"):
        raise StudySpecError(f"heal.granularity must be layer or attention, got {granularity!r}")
    keep = _flag(v.pop("keep_merged", False), "heal.keep_merged")
    dense_ref = _flag(v.pop("dense_reference", False), "heal.dense_reference")
    v.setdefault("eval_corpora", list(evaluation.corpora))
    v.setdefault("eval_windows", evaluation.windows)
    try:
        config = HealConfig.from_spec(v)
    except (TypeError, ValueError) as e:
        raise StudySpecError(f"heal: {e}") from None
    return StudyHeal(config, n_prune, granularity, keep, dense_ref)


def _pairs(cal: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """``calibration.pairs: [[wikipedia, 0], [wikipedia, 1], [lambada, 0]]``: the calibrations to run when not
    every corpus needs every seed (the first pair is the reference); excludes ``corpora`` and ``seeds``."""
    if "pairs" not in cal:
        return ()
    if "corpora" in cal or "seeds" in cal:
        raise StudySpecError("calibration: give either pairs or corpora and seeds, not both")
    raw = cal["pairs"]
    ok = isinstance(raw, list) and raw and all(
        isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], int)
        and not isinstance(p[1], bool) for p in raw)
    if not ok:
        raise StudySpecError(f"calibration.pairs must be a list of [corpus, seed] pairs, got {raw!r}")
    pairs = tuple((str(c), int(s)) for c, s in raw)
    if len(set(pairs)) != len(pairs):
        raise StudySpecError(f"calibration.pairs lists a calibration twice: {raw!r}")
    return pairs


def _paths(v: Any, where: str) -> tuple[str, ...]:
    vals = [] if v is None else v if isinstance(v, list) else [v]
    if not all(isinstance(x, str) and x for x in vals):
        raise StudySpecError(f"{where} must be a path or a list of paths, got {v!r}")
    return tuple(vals)


def _compare_with(v: Any) -> tuple[str, str] | None:
    """``{report: docs/RESULTS.md, spec: blockprune/jobs/configs/study.yaml}``: the study to contrast with (its
    runs are read from the report's ``runs.json``)."""
    if v is None:
        return None
    v = _keys(v if isinstance(v, dict) else {"?": v}, {"report", "spec"}, "compare_with")
    paths = (v.get("report"), v.get("spec"))
    if not all(isinstance(p, str) and p for p in paths):
        raise StudySpecError(f"compare_with needs a report and a spec path, got {v!r}")
    return paths  # type: ignore[return-value]


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
    pairs = _pairs(cal)
    corpora = tuple(dict.fromkeys(c for c, _ in pairs)) or tuple(str(c) for c in (cal.get("corpora") or ["wikipedia"]))
    seeds = tuple(dict.fromkeys(s for _, s in pairs)) or _ints(cal.get("seeds", [0]), "calibration.seeds")
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
                           lm_eval_scope=scope, lm_eval_dtype=lm_dtype,
                           replay_dense_prefix=_flag(ev.get("replay_dense_prefix", False),
                                                     "evaluation.replay_dense_prefix"))
    tracking = _keys(d.get("tracking") or {}, {"experiment"}, "tracking")
    try:
        spec = StudySpec(
            name=str(d.get("name", "study")), models=tuple(models), corpora=corpora, seeds=seeds, pairs=pairs,
            n_samples=int(cal.get("n_samples", 128)), seq_len=int(cal.get("seq_len", 256)), capture=capture,
            layer_methods=layer_m, attention_methods=attn_m, evaluation=evaluation,
            experiment=str(tracking.get("experiment", "blockprune-study")), quick=bool(d.get("quick", False)),
            dtype=str(d.get("dtype", "float32")), store_root=d.get("store_root"), heal=_heal(d.get("heal"), evaluation),
            report=(_paths(d.get("report"), "report") or (None,))[0], see_also=_paths(d.get("see_also"), "see_also"),
            compare_with=_compare_with(d.get("compare_with")),
            source=source, raw=d,
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
    _check_rows(spec)
    if spec.heal is not None:
        _check_heal(spec)
    return depth


def _check_rows(spec: StudySpec) -> None:
    """Two entries the report would show as one row (same method id, e.g. one estimator under two stage rules)
    are refused: their plans would be mixed in every table. A ``display`` name must name one row only."""
    for where, refs in (("methods.layer", spec.layer_methods), ("methods.attention", spec.attention_methods)):
        seen: dict[str, MethodRef] = {}
        for m in refs:
            if m.label in seen:
                raise StudySpecError(f"{where} lists {m.label} twice ({seen[m.label]} and {m}): the report could not "
                                     "tell their rows apart")
            seen[m.label] = m
            if m.stage_rule not in (None, "fixed") and m.estimator == _default_estimator(m.method):
                raise StudySpecError(f"{where}: {m} changes the stage rule of the default estimator: its row would "
                                     f"read as {m.method} as its authors ran it (the report tells readings apart "
                                     "by estimator); use another estimator for a stage-rule variant")
    names: dict[str, str] = {}
    for m in spec.layer_methods + spec.attention_methods:
        if m.display and names.setdefault(m.display, m.label) != m.label:
            raise StudySpecError(f"display name {m.display!r} is given to {names[m.display]} and {m.label}")


def _check_heal(spec: StudySpec) -> None:
    """Healing needs plans of the block counts it names, and training tokens for its budget: checked now,
    not after hours of selection and evaluation."""
    from blockprune.healing.run import precheck_heal

    assert spec.heal is not None
    for m in spec.models:
        counts = m.layer if spec.heal.granularity == "layer" else m.attention
        missing = sorted(set(spec.heal.n_prune) - set(counts))
        if missing:
            raise StudySpecError(f"heal.n_prune {missing}: models.{m.name} has no {spec.heal.granularity} plans of "
                                 f"that many blocks ({spec.heal.granularity}: {list(counts)})")
        precheck_heal(m.name, spec.heal.config)


CONFIGS = Path(__file__).resolve().parent.parent / "jobs" / "configs"


def default_spec_path(quick: bool, qwen: bool = False) -> Path:
    """The project's specs: study(-quick).yaml on the bundled small models, study-qwen(-quick).yaml on Qwen."""
    return CONFIGS / f"study{'-qwen' if qwen else ''}{'-quick' if quick else ''}.yaml"
