"""Run a study: select every trial on every calibration, then evaluate every distinct plan once.

Resumable at every step: a store with the same settings is reused (never recaptured), MI/entropy scores
come from the store's score cache, and a trial or evaluation whose key already has a finished MLflow run
is skipped. A deadline stops between units of work, so a long CPU study can be run in pieces.

Order (``STAGES``), so that a partial run is already useful: the reference calibration (first corpus,
first seed) of every model and the perplexity of its plans and the dense model; then the other
calibrations' selections (plan stability); then the answer baselines of the lm-eval documents (chance
and best constant answer, no model); then lm-eval of the reference plans; then the perplexity of the
other calibrations' plans; then lm-eval of those (when the spec's ``lm_eval_scope`` is ``all``); last, when the spec has a ``heal:``
section, LoRA healing of each method family's best reference plan (:mod:`blockprune.study.heal`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.windows import heldout_windows
from blockprune.evaluation.answer_baselines import answer_baselines
from blockprune.evaluation.cpu_features import bf16_cpu_warning, cpu_label
from blockprune.evaluation.lm_eval_tasks import run_lm_eval
from blockprune.models.adapters import adapter_for
from blockprune.models.zoo import load_model, load_tokenizer, resolve_model
from blockprune.pipeline.config import EvalSettings, JobConfig
from blockprune.selection.plan import PrunePlan
from blockprune.selection.topk import TooFewBlocksError
from blockprune.study.heal import heal_study
from blockprune.study.record import (
    DENSE,
    LM_EVAL_CPU,
    RECHECK,
    ImportCounts,
    RunRecord,
    StudyLog,
    baseline_key,
    blocks_text,
    calibration_key,
    import_runs,
    method_id,
    parse_blocks,
    plan_key,
    trial_key,
)
from blockprune.study.replay import StageReplay, differing_metrics, stage_replay
from blockprune.study.report import study_from_runs
from blockprune.study.spec import ModelGrid, StudySpec, validate

log = logging.getLogger(__name__)
Echo = Callable[[str], None]


@dataclass
class Deadline:
    """Wall-clock budget; ``None`` = no limit."""

    seconds: float | None = None
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.monotonic()

    def passed(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.start > self.seconds


@dataclass
class Progress:
    selections: int = 0
    evaluations: int = 0
    lm_evals: int = 0
    heals: int = 0
    stopped_early: bool = False


def _job(spec: StudySpec, model: ModelGrid, cal: Any, trials: list[Any]) -> Any:
    return JobConfig(model=model.name, calibration=cal, trials=tuple(trials), capture=spec.capture_for(model),
                     evaluation=EvalSettings(windows=1), dtype=spec.dtype, store_root=spec.store_root)


def select_all(spec: StudySpec, slog: StudyLog, state: Progress, deadline: Deadline, echo: Echo,
               models: dict[str, Any], reference: bool) -> None:
    """Capture (or reuse) the reference calibration's store (or the others') and make every selection."""
    from blockprune.pipeline.prepare import capture_or_reuse, prepare, store_path, trial_store
    from blockprune.pipeline.scoring import score_and_select

    done = slog.by_key("selection")
    for m in spec.models:
        trials = spec.trials(m)
        for ci, cal in enumerate(spec.calibrations()):
            if (ci == 0) != reference:
                continue
            ckey = calibration_key(m.name, cal.corpus, cal.seed, cal.n_samples, cal.seq_len, dict(m.capture))
            todo = [t for t in trials if trial_key(ckey, t.method, t.estimator, t.granularity, t.n_prune,
                                                   t.estimator_params, t.stage_rule) not in done]
            if not todo:
                continue
            if deadline.passed():
                state.stopped_early = True
                return
            p = prepare(_job(spec, m, cal, todo))
            if not (store_path(p) / "manifest.json").exists() and m.name not in models:
                models[m.name] = load_model(m.name, dtype=spec.dtype)[0]

            def load(name: str = m.name) -> Any:  # a store that fails verification is captured again
                if name not in models:
                    models[name] = load_model(name, dtype=spec.dtype)[0]
                return models[name]

            store, reused = capture_or_reuse(p, models.get(m.name), load=load)
            manifest = store.manifest
            echo(f"[study] {ckey}: store {'reused' if reused else 'captured'} "
                 f"({manifest.get('capture_seconds', 0):.1f} s capture); {len(todo)} selections to make")
            parent = slog.start("calibration", ckey, ckey, {
                "model": m.name, "corpus": cal.corpus, "seed": cal.seed, "reference": int(ci == 0),
                "store_checksum": store.checksum, "store_path": store.path})
            slog.log(parent, {"capture_seconds": float(manifest.get("capture_seconds", 0.0)),
                              "tokens_calibrated": float(manifest.get("tokens_calibrated", 0)),
                              "sample_rows": float(store.n_rows)})
            stores = {p.job.capture: store}

            def extra_store(tp: Any, _: Any, ckey: str = ckey, load: Any = load, name: str = m.name) -> Any:
                extra = capture_or_reuse(tp, models.get(name), load=load)[0]  # a per-window estimator's store
                echo(f"[study] {ckey}: per-window store {extra.path}")
                return extra

            for t in todo:
                _, t_store = trial_store(p, t, stores, extra_store)
                tkey = trial_key(ckey, t.method, t.estimator, t.granularity, t.n_prune, t.estimator_params,
                                 t.stage_rule)
                tags = {"model": m.name, "corpus": cal.corpus, "seed": cal.seed, "reference": int(ci == 0),
                        "method": t.method, "estimator": t.estimator or "none", "granularity": t.granularity,
                        "label": method_id(t.method, t.estimator, t.estimator_params), "n_prune": t.n_prune,
                        "store_checksum": t_store.checksum}
                name = f"{m.name} {t.name} @{cal.corpus}/s{cal.seed}"
                t0 = time.perf_counter()
                try:
                    scored = score_and_select(t_store, t)
                except TooFewBlocksError as e:  # recorded: the report lists what a method could not select
                    rid = slog.start("selection", tkey, name, tags | {"infeasible": str(e)}, parent=parent)
                    slog.log(rid, {"scoring_seconds": time.perf_counter() - t0})
                    slog.finish(rid)
                    echo(f"[study] {tkey}: not selectable: {e}")
                    continue
                seconds = time.perf_counter() - t0
                plan = scored.to_plan(t, t_store, model_id=p.resolved.name, revision=p.resolved.revision,
                                      n_blocks=p.n_layers, calibration=p.job.calibration)
                rid = slog.start("selection", tkey, name, tags | {
                    "blocks": blocks_text(plan.blocks), "plan_key": plan_key(m.name, t.granularity, plan.blocks)},
                    parent=parent)
                slog.log(rid, {"scoring_seconds": seconds, "exact_scores": float(scored.selection.evaluations),
                               "n_blocks": float(plan.n_blocks)}, artifact=("plan.json", plan.to_dict()))
                slog.finish(rid)
                state.selections += 1
            slog.finish(parent)
            echo(f"[study] {ckey}: {len(todo)} selections logged")


def _plans(slog: StudyLog, spec: StudySpec, m: ModelGrid) -> list[tuple[str, str, tuple[int, ...], bool]]:
    """(plan_key, granularity, blocks, from the reference calibration) in evaluation order."""
    sels = [r for r in slog.runs("selection") if r.tags.get("model") == m.name and "plan_key" in r.tags]
    order = {(c.corpus, c.seed): i for i, c in enumerate(spec.calibrations())}
    sels.sort(key=lambda r: (order.get((r.tags["corpus"], int(r.tags["seed"])), 99), r.tags["granularity"],
                             int(r.tags["n_prune"]), r.tags["method"], r.tags["estimator"]))
    out: dict[str, tuple[str, str, tuple[int, ...], bool]] = {}
    for r in sels:
        k = r.tags["plan_key"]
        ref = r.tags.get("reference") == "1"
        if k not in out or (ref and not out[k][3]):
            out[k] = (k, r.tags["granularity"], parse_blocks(r.tags["blocks"]), ref)
    return sorted(out.values(), key=lambda v: not v[3])  # stable: reference plans first


@dataclass
class _ModelEval:
    """What one model needs to be evaluated: the loaded dense model and how to build a plan from it."""

    name: str
    model: Any
    tokenizer: Any
    resolved: Any
    n_layers: int
    info: dict[str, tuple[str, tuple[int, ...]]]
    run_ids: dict[str, str]
    windows: dict[str, Any] | None = None
    replay: StageReplay | None = None

    def build(self, key: str) -> contextlib.AbstractContextManager[Any]:
        """``with me.build(key) as net:`` the dense model, or the plan applied in place and undone on exit
        (no copy of the weights: a model that barely fits still has every plan evaluated)."""
        from blockprune.models.apply import applied

        if key.endswith(f"|{DENSE}"):
            return contextlib.nullcontext(self.model)
        g, b = self.info[key]
        return applied(self.model, PrunePlan(model_id=self.resolved.name, revision=self.resolved.revision,
                                             n_blocks=self.n_layers, blocks=b, granularity=g,  # type: ignore[arg-type]
                                             method="study"))

    def prefix(self, key: str, net: Any) -> contextlib.AbstractContextManager[Any]:
        """Inside :meth:`build`: the dense model records its hidden states when the stage's recording is not
        finished yet; a plan replays them (``None`` stats when the spec does not ask for replay)."""
        if self.replay is None:
            return contextlib.nullcontext(None)
        if key.endswith(f"|{DENSE}"):
            return contextlib.nullcontext(None) if self.replay.covered() else self.replay.record(net)
        return self.replay.replay(net)

    def perplexities(self, net: Any, ev: Any) -> dict[str, float]:
        if self.windows is None:
            self.windows = {c: heldout_windows(self.tokenizer, load_corpus(c), ev.seq_len, ev.windows)
                            for c in ev.corpora}
        from blockprune.evaluation.perplexity import chunk_perplexity

        return {f"ppl.{c}": chunk_perplexity(net, w, batch_size=ev.batch_size, progress=False).perplexity
                for c, w in self.windows.items()}


def _ppl_order(run: RunRecord | None, corpora: tuple[str, ...]) -> float:
    """Sort key for lm-eval: mean log perplexity over the corpora (dense first, collapsed plans last:
    where the perplexity has exploded the accuracy is chance level and tells least)."""
    vals = [run.metrics.get(f"ppl.{c}") for c in corpora] if run is not None else []
    if not vals or any(v is None or not v > 0 for v in vals):
        return math.inf
    return sum(math.log(v) for v in vals) / len(vals)  # type: ignore[arg-type]


def _interleave(lists: list[list[Any]]) -> list[Any]:
    """Round-robin over the models, so a study stopped by its time budget has some of every model."""
    out: list[Any] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def evaluate_all(spec: StudySpec, slog: StudyLog, state: Progress, deadline: Deadline, echo: Echo,
                 models: dict[str, Any], stage: str) -> None:
    """``stage`` "ppl-reference": perplexity of the dense model and the reference calibration's plans;
    "ppl": of every distinct plan; "tasks-reference": lm-eval of the dense model and the reference plans;
    "tasks": lm-eval of every plan in the spec's ``lm_eval_scope``. lm-eval alternates between models and
    takes a model's plans from the lowest perplexity up (:func:`_ppl_order`)."""
    from blockprune.evaluation.cost import count_parameters

    ev = spec.evaluation
    tasks_tag = ev.tasks_tag
    ref_only = stage.endswith("-reference") or (stage == "tasks" and ev.lm_eval_scope == "reference")
    done = slog.by_key("evaluation")
    work: list[list[tuple[str, str]]] = []
    ctx: dict[str, _ModelEval] = {}
    for m in spec.models:
        plans = _plans(slog, spec, m)
        dense = plan_key(m.name, "", None)
        ref = {dense} | {k for k, _, _, r in plans if r}
        keys = [k for k in [dense] + [k for k, *_ in plans] if k in ref or not ref_only]
        if stage.startswith("ppl"):
            todo = [("ppl", k) for k in keys if k not in done]
        elif ev.tasks:
            todo = [("tasks", k) for k in sorted(keys, key=lambda k: _ppl_order(done.get(k), ev.corpora))
                    if k in done and done[k].tags.get("tasks_done") != tasks_tag]
        else:
            todo = []
        if not todo:
            continue
        if deadline.passed():
            state.stopped_early = True
            return
        resolved = resolve_model(m.name)
        if m.name not in models:
            models[m.name] = load_model(m.name, dtype=spec.dtype)[0]
        model = models[m.name]
        me = ctx[m.name] = _ModelEval(m.name, model, load_tokenizer(resolved), resolved,
                                      adapter_for(model).n_layers(model.config),
                                      {k: (g, b) for k, g, b, _ in plans}, {k: r.run_id for k, r in done.items()})
        me.replay = stage_replay(m.name, resolved.revision, spec, "ppl" if stage.startswith("ppl") else "tasks",
                                 [me.info[k][1] for _, k in todo if k != dense])
        if me.replay is not None and not me.replay.covered():
            if any(k == dense for _, k in todo):
                todo.sort(key=lambda w: w[1] != dense)  # the dense pass records what the plans replay
            elif len(todo) >= 2:
                todo.insert(0, ("record", dense))  # evaluated in an earlier piece: one pass to record
        work.append([(m.name, *w) for w in todo])

    for name, what, k in _interleave(work) if stage.startswith("tasks") else [w for x in work for w in x]:
        if deadline.passed():
            state.stopped_early = True
            return
        me = ctx[name]
        t0 = time.perf_counter()
        if what == "record":
            _record_dense(me, k, ev, slog, done.get(k), echo)
            continue
        if what == "ppl":
            with me.build(k) as net, me.prefix(k, net) as rep:
                metrics = me.perplexities(net, ev)
                params = count_parameters(net)
            metrics |= {"params_total": float(params["total"]), "params_per_token": float(params["per_token"]),
                        "ppl_seconds": time.perf_counter() - t0} | _replay_metrics(me, k, rep, "ppl", t0)
            g, b = me.info.get(k, ("dense", ()))
            rid = slog.start("evaluation", k, k, {"model": name, "granularity": g, "blocks": blocks_text(b),
                                                   "n_prune": len(b), "plan_key": k})
            slog.log(rid, metrics)
            slog.finish(rid)
            me.run_ids[k] = rid
            state.evaluations += 1
            echo(f"[study] {k}: perplexity " + ", ".join(f"{c} {metrics[f'ppl.{c}']:.2f}" for c in me.windows))
        else:
            with me.build(k) as net, me.prefix(k, net) as rep:
                metrics = _lm_eval(net, me.tokenizer, ev)
            metrics["lm_eval_seconds"] = time.perf_counter() - t0
            metrics |= _replay_metrics(me, k, rep, "lm_eval", t0)
            slog.log(me.run_ids[k], metrics, tags={"tasks_done": tasks_tag, LM_EVAL_CPU: cpu_label()})
            state.lm_evals += 1
            echo(f"[study] {k}: lm-eval done in {metrics['lm_eval_seconds']:.0f} s")


def _replay_metrics(me: _ModelEval, key: str, rep: Any, prefix: str, t0: float) -> dict[str, float]:
    """How much of a plan's pass was replayed; for the dense pass that recorded, the recording is marked done."""
    if rep is None or me.replay is None:
        return {}
    if key.endswith(f"|{DENSE}"):
        me.replay.mark(rep, time.perf_counter() - t0)
        return {f"{prefix}_recorded_files": float(rep.saved)}
    return {f"{prefix}_replayed_layers": float(rep.skipped_layers), f"{prefix}_replay_misses": float(rep.misses)}


def _record_dense(me: _ModelEval, key: str, ev: Any, slog: StudyLog, logged: RunRecord | None, echo: Echo) -> None:
    """One dense pass that only records (the dense model was evaluated in an earlier piece); its numbers are
    checked against the logged ones, which they equal unless the machine or libraries changed."""
    assert me.replay is not None
    ppl = me.replay.stage == "ppl"
    t0 = time.perf_counter()
    with me.replay.record(me.model) as rec:
        fresh = me.perplexities(me.model, ev) if ppl else _lm_eval(me.model, me.tokenizer, ev)
    seconds = time.perf_counter() - t0
    me.replay.mark(rec, seconds)
    differ = differing_metrics(logged.metrics if logged is not None else {}, fresh)
    stage = "ppl" if ppl else "lm_eval"
    found = ("differs: " + "; ".join(differ)) if differ else "equal"
    slog.log(me.run_ids[key], {f"{stage}_record_seconds": seconds},
             tags={f"{RECHECK}.{stage}": f"{found} (recomputed on {cpu_label()})"[:5000]})
    echo(f"[study] {key}: recorded the dense hidden states after layers {list(me.replay.layers)} "
         f"({rec.saved} files, {seconds:.0f} s); "
         + (f"recomputed metrics differ from the logged run: {differ}" if differ else "numbers equal the logged run's"))


def _tasks_by_limit(ev: Any) -> dict[int | None, list[str]]:
    """The spec's tasks grouped by their limit: one lm-eval call (or baseline pass) per limit."""
    by_limit: dict[int | None, list[str]] = {}
    for t, lim in ev.tasks:
        by_limit.setdefault(lim, []).append(t)
    return by_limit


def _lm_eval(model: Any, tokenizer: Any, ev: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for lim, names in _tasks_by_limit(ev).items():
        res = run_lm_eval(model, tokenizer, names, limit=lim, batch_size=ev.batch_size,
                          mixed_precision=None if ev.lm_eval_dtype == "float32" else ev.lm_eval_dtype)
        for task, vals in res.items():
            for name, v in vals.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[f"{task}.{name}"] = float(v)
    return out


def log_baselines(spec: StudySpec, slog: StudyLog, echo: Echo) -> None:
    """Chance and best-constant-answer accuracy of the documents lm-eval scores, once per set of documents
    (seconds, no model): the floor the report reads every accuracy against."""

    ev = spec.evaluation
    key = baseline_key(ev.docs_tag)
    if not ev.tasks or slog.by_key("baseline").get(key) is not None:
        return
    metrics = {f"{task}.{name}": v for lim, names in _tasks_by_limit(ev).items()
               for task, vals in answer_baselines(names, lim).items() for name, v in vals.items()}
    rid = slog.start("baseline", key, "answer baselines", {"docs": ev.docs_tag})
    slog.log(rid, metrics)
    slog.finish(rid)
    echo("[study] answer baselines: " + ", ".join(f"{t} chance {metrics[f'{t}.chance']:.2f} / constant "
                                                  f"{metrics[f'{t}.constant']:.2f}" for t, _ in ev.tasks))


def import_study_runs(spec: StudySpec, tracking_uri: str, path: Any) -> ImportCounts:
    """Load a report's ``runs.json`` into the tracking store (see :func:`record.import_runs`)."""
    ledger = json.loads(Path(path).read_text())
    slog = StudyLog(tracking_uri, spec.experiment, spec.name, spec.fingerprint)
    return import_runs(slog, ledger, str(path))


STAGES = ("select-reference", "ppl-reference", "select", "baselines", "tasks-reference", "ppl", "tasks", "heal")


def run_study(spec: StudySpec, tracking_uri: str, *, max_minutes: float | None = None, lm_eval: bool = True,
              echo: Echo = print) -> tuple[Progress, list[RunRecord]]:
    """Validate, select, evaluate; returns progress and every finished run of this study. ``lm_eval=False``
    skips the lm-eval stages: the rest of the grid runs on a machine that is slow at them, and the report
    stays partial until a rerun with lm-eval."""
    depth = validate(spec)  # before any model loads
    warning = bf16_cpu_warning(spec.evaluation.lm_eval_dtype) if lm_eval and spec.evaluation.tasks else None
    if warning:
        echo(f"[study] warning: {warning}")
    stages = STAGES if lm_eval else tuple(s for s in STAGES if not s.startswith("tasks"))
    slog = StudyLog(tracking_uri, spec.experiment, spec.name, spec.fingerprint)
    state, deadline = Progress(), Deadline(None if max_minutes is None else max_minutes * 60)
    models: dict[str, Any] = {}
    echo(f"[study] {spec.name} ({'quick' if spec.quick else 'full'} grid {spec.fingerprint}) → {tracking_uri}, "
         f"experiment {spec.experiment!r}")
    for step in stages:
        if step.startswith("select"):
            select_all(spec, slog, state, deadline, echo, models, reference=step == "select-reference")
        elif step == "baselines":
            log_baselines(spec, slog, echo)
        elif step == "heal":
            study = study_from_runs(spec, slog.runs())
            state.heals, state.stopped_early = heal_study(spec, slog, study, depth, deadline=deadline.passed,
                                                          echo=echo, release=models.clear)
        else:
            evaluate_all(spec, slog, state, deadline, echo, models, stage=step)
        if state.stopped_early:
            break
    echo(f"[study] {state.selections} selections, {state.evaluations} perplexity and {state.lm_evals} lm-eval "
         f"evaluations" + (f", {state.heals} healings" if spec.heal else "") + " this run" + (" (stopped at the time budget; run again to resume)" if state.stopped_early
                                    else ""))
    return state, slog.runs()

