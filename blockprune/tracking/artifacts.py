"""What a trial leaves in MLflow besides metrics: the plan, per-block score curves, tables, figures.

Layout of a trial (child) run, relied on by ``blockprune compare``:

- params: the flattened trial config (``model``, ``revision``, ``calibration.*``, ``method``,
  ``estimator``, ``estimator_params.*``, ``granularity``, ``n_prune``, ``s_start``);
- metrics: ``score.<name>`` per block (step = block index), ``entropy.h`` / ``entropy.m`` per
  boundary (step = boundary index), ``run_<score>.len_NN`` (step = first block of the run),
  ``s_start``, ``n_dropped``, ``exact_scores_brute_force``, ``latency.*`` when measured;
- tags: ``blockprune.blocks`` ("3,5,7"), ``blockprune.plan``;
- artifacts: ``plan.json``, ``tables/{block_scores,entropy,run_scores}.json``,
  ``figures/score_<name>.png``, ``figures/entropy.png``, ``figures/run_<score>_heatmap.png``,
  ``eval/tasks.json``, ``eval/latency.json``, ``samples/generation.{json,txt}``.

A job (parent) run gets ``tables/trials.json``, ``figures/ppl_vs_pruned.png``,
``figures/dropped_blocks*.png`` and ``agreement/*`` from :func:`log_job_summary`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

from blockprune.selection import METHODS
from blockprune.selection.fbs import brute_force_evaluations, contiguous_groups
from blockprune.selection.plan import PrunePlan, parse_run_key, run_key
from blockprune.tracking import figures as F
from blockprune.tracking.figures import entropy_series
from blockprune.tracking.figures import plan_label as _label
from blockprune.tracking.tracker import Tracker, flatten

PLAN_ARTIFACT = "plan.json"
BLOCKS_TAG = "blockprune.blocks"
PLAN_TAG = "blockprune.plan"


def trial_params(plan: PrunePlan, s_start: int | None = None) -> dict[str, Any]:
    """The trial config a plan encodes, under the names the runner logs (stable registry names).

    ``s_start`` is the user's EntroDrop override (a config); a detected boundary is a result and
    goes to the ``s_start`` metric instead.
    """
    if s_start is None and plan.info.get("s_start_source") == "override":
        s_start = plan.info.get("s_start")
    return {
        "model": plan.model_id,
        "revision": plan.revision,
        "calibration": asdict(plan.calibration) if plan.calibration is not None else None,
        "method": plan.method,
        "estimator": plan.estimator or "none",
        "estimator_params": dict(plan.estimator_params),
        "granularity": plan.granularity,
        "n_prune": plan.n_prune,
        "s_start": s_start,
    }


def run_score_name(plan: PrunePlan) -> str:
    """What a plan's run scores measure (``mi``, ``angular_distance`` …), from the method registry."""

    try:
        return METHODS.get(plan.method).score or "score"
    except KeyError:
        return "score"


def log_trial(
    tracker: Tracker,
    plan: PrunePlan,
    metrics: Mapping[str, Any] | None = None,
    *,
    tasks: Mapping[str, Mapping[str, Any]] | None = None,
    latency: Any = None,
    samples: Sequence[Mapping[str, Any]] | None = None,
    figures: bool = True,
) -> None:
    """Everything a trial run holds besides the runner's own metrics (call inside the child run).

    ``metrics`` are the values the caller already logged (they are not logged again; they name
    what not to duplicate). ``tasks``: lm-eval results ``{task: {"acc": …}}``; ``latency``: a
    ``LatencyResult`` or its dict; ``samples``: generation samples (list of dicts, e.g. from
    ``generate_samples``). ``figures=False`` skips matplotlib (fast tests, huge sweeps).
    """
    if not tracker.enabled:
        return
    metrics = dict(metrics or {})
    tracker.log_dict(plan.to_dict(), PLAN_ARTIFACT)
    _log_missing_params(tracker, trial_params(plan))
    tracker.set_tags({BLOCKS_TAG: ",".join(str(b) for b in plan.blocks), PLAN_TAG: _label(plan)})
    tracker.log_series_batch(_series(plan))
    tracker.log_metrics({k: v for k, v in _scalars(plan).items() if k not in metrics})
    _log_tables(tracker, plan)
    if tasks:
        tracker.log_dict({k: dict(v) for k, v in tasks.items()}, "eval/tasks.json")
        task_metrics = {f"pruned.{t}.{k}": v for t, vals in tasks.items() for k, v in vals.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)}
        tracker.log_metrics({k: v for k, v in task_metrics.items() if k not in metrics})
    if latency is not None:
        lat = _as_dict(latency)
        tracker.log_dict(lat, "eval/latency.json")
        tracker.log_metrics({f"latency.{k}": v for k, v in lat.items()
                             if isinstance(v, int | float) and not isinstance(v, bool)})
    if samples:
        log_samples(tracker, samples)
    if figures:
        log_plan_figures(tracker, plan)


def log_samples(tracker: Tracker, samples: Sequence[Mapping[str, Any]], name: str = "generation") -> None:
    """Generation samples as JSON (for tools) and as text (for reading in the MLflow UI)."""
    if not tracker.enabled:
        return
    rows = [dict(s) for s in samples]
    tracker.log_dict(rows, f"samples/{name}.json")
    parts = []
    for i, s in enumerate(rows):
        prompt = s.get("prompt", "")
        completion = s.get("completion", s.get("text", ""))
        extra = {k: v for k, v in s.items() if k not in ("prompt", "completion", "text")}
        parts.append(f"### sample {i}\n{prompt}▌{completion}\n" + (f"  {extra}\n" if extra else ""))
    tracker.log_text("\n".join(parts), f"samples/{name}.txt")


def log_plan_figures(tracker: Tracker, plan: PrunePlan) -> None:
    """Per-block curves, the entropy stages, and the run-score heatmap of one plan."""
    if not tracker.enabled:
        return

    for name in plan.scores:
        tracker.log_figure(F.block_score_figure(plan, name), f"figures/score_{_safe(name)}.png")
    if F.entropy_series(plan):
        tracker.log_figure(F.entropy_figure(plan), "figures/entropy.png")
    if plan.run_scores:
        score = run_score_name(plan)
        tracker.log_figure(F.run_heatmap_figure(plan, score), f"figures/run_{_safe(score)}_heatmap.png")


def log_job_summary(tracker: Tracker, results: Sequence[Any], *, figures: bool = True) -> None:
    """Parent-run view over a job's trials: a trials table, perplexity vs blocks pruned, agreement.

    Call inside the parent run after the last trial. ``results`` are ``TrialResult``-like objects
    or dicts with ``plan`` (PrunePlan), ``metrics`` (dict) and optionally ``run_id``.
    """
    if not tracker.enabled or not results:
        return

    rows = [_result_row(r) for r in results]
    plans: list[PrunePlan] = [r["plan"] for r in rows]
    table: dict[str, list[Any]] = {
        "run_id": [r["run_id"] for r in rows],
        "plan": [_label(p) for p in plans],
        "model": [p.model_id for p in plans],
        "method": [p.method for p in plans],
        "estimator": [p.estimator or "none" for p in plans],
        "granularity": [p.granularity for p in plans],
        "n_prune": [p.n_prune for p in plans],
        "blocks": [",".join(map(str, p.blocks)) for p in plans],
    }
    metric_keys = sorted({k for r in rows for k in r["metrics"]
                          if isinstance(r["metrics"][k], int | float) and not isinstance(r["metrics"][k], bool)})
    for k in metric_keys:
        table[k] = [r["metrics"].get(k) for r in rows]
    tracker.log_table(table, "tables/trials.json")
    revisions = {p.revision for p in plans}
    models = {p.model_id for p in plans}
    tags: dict[str, Any] = {"blockprune.n_trials": len(plans)}
    if len(revisions) == 1 and None not in revisions:
        tags["model_revision"] = revisions.pop()
    if len(models) == 1:
        tags["model"] = next(iter(models))
    tracker.set_tags(tags)

    series: dict[str, tuple[list[float], list[int]]] = {}
    for r in rows:
        ppl = r["metrics"].get("ppl_pruned")
        if ppl is None:
            continue
        key = "ppl_pruned." + _safe(f"{_label(r['plan'])}/{r['plan'].granularity}")
        vals, steps = series.setdefault(key, ([], []))
        if r["plan"].n_prune not in steps:
            vals.append(float(ppl))
            steps.append(r["plan"].n_prune)
    tracker.log_series_batch({k: (v, s) for k, (v, s) in series.items()})
    if not figures:
        return
    for group, members in _groups(rows).items():
        if len({m["plan"].n_prune for m in members}) > 1:
            dense = [m["metrics"].get("ppl_dense") for m in members if m["metrics"].get("ppl_dense") is not None]
            points = [{"label": _label(m["plan"]), "n_prune": m["plan"].n_prune, "ppl": m["metrics"].get("ppl_pruned")}
                      for m in members]
            fig = F.ppl_vs_pruned_figure(points, dense[0] if dense else None,
                                         title=f"perplexity vs blocks pruned · {group[0]} · {group[1]}")
            tracker.log_figure(fig, f"figures/ppl_vs_pruned{_suffix(group, len(_groups(rows)))}.png")
        labels = [f"{_label(m['plan'])} k={m['plan'].n_prune}" for m in members]
        fig = F.dropped_grid_figure(labels, members[0]["plan"].n_blocks, [m["plan"].blocks for m in members],
                                    title=f"dropped blocks · {group[0]} · {group[1]}")
        tracker.log_figure(fig, f"figures/dropped_blocks{_suffix(group, len(_groups(rows)))}.png")
    for (model, gran, k), members in _agreement_groups(rows).items():
        labels = [_label(m["plan"]) for m in members]
        matrix = F.agreement_matrix([m["plan"].blocks for m in members])
        name = _safe(f"{model}_{gran}_k{k}")
        tracker.log_dict({"labels": labels, "jaccard": matrix.round(4).tolist()}, f"agreement/{name}.json")
        tracker.log_figure(F.agreement_figure(labels, matrix, f"Jaccard of dropped blocks · {model} · {gran} · k={k}"),
                           f"agreement/{name}.png")


# ---------------------------------------------------------------------------------------------- helpers


def _safe(name: str) -> str:
    """MLflow metric / file names: letters, digits, ``_ - . /`` only."""
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", name)


def _suffix(group: tuple[str, str], n_groups: int) -> str:
    return "" if n_groups == 1 else "_" + _safe(f"{group[0]}_{group[1]}").replace("/", "_")


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    raise TypeError(f"expected a mapping or a dataclass, got {type(obj).__name__}")


def _result_row(r: Any) -> dict[str, Any]:
    get = r.get if isinstance(r, Mapping) else lambda k, d=None: getattr(r, k, d)
    plan = get("plan")
    if not isinstance(plan, PrunePlan):
        raise TypeError(f"a job result needs a PrunePlan under 'plan', got {type(plan).__name__}")
    return {"plan": plan, "metrics": dict(get("metrics") or {}), "run_id": get("run_id")}


def _groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["plan"].model_id, r["plan"].granularity), []).append(r)
    return out


def _agreement_groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    """Plans comparable block for block: same model, granularity and number pruned, ≥ 2 of them."""
    out: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        p = r["plan"]
        out.setdefault((p.model_id, p.granularity, p.n_prune), []).append(r)
    return {k: v for k, v in out.items() if len(v) > 1}


def _log_missing_params(tracker: Tracker, params: Mapping[str, Any]) -> None:
    """Log only params the run lacks: MLflow refuses to change a logged param's value."""
    have = tracker.run_params()
    missing = {k: v for k, v in flatten(params).items() if k not in have}
    if missing:
        tracker.log_params(missing)


def _series(plan: PrunePlan) -> dict[str, tuple[list[float], list[int] | None]]:
    series: dict[str, tuple[list[float], list[int] | None]] = {
        f"score.{_safe(name)}": (list(values), None) for name, values in plan.scores.items()
    }
    for kind, (xs, ys) in entropy_series(plan).items():
        series[f"entropy.{kind}"] = (ys, xs)
    by_len: dict[int, tuple[list[float], list[int]]] = {}
    for key, value in sorted(plan.run_scores.items(), key=lambda kv: parse_run_key(kv[0])):
        run = parse_run_key(key)
        vals, steps = by_len.setdefault(len(run), ([], []))
        vals.append(float(value))
        steps.append(run[0])
    score = _safe(run_score_name(plan)) if plan.run_scores else "score"
    for length, (vals, steps) in sorted(by_len.items()):
        series[f"run_{score}.len_{length:02d}"] = (vals, steps)
    return series


def _scalars(plan: PrunePlan) -> dict[str, float]:
    out: dict[str, float] = {"n_dropped": plan.n_prune, "n_blocks": plan.n_blocks}
    if plan.info.get("s_start") is not None:
        out["s_start"] = float(plan.info["s_start"])
    if plan.info.get("evaluations") is not None:
        out["exact_scores"] = float(plan.info["evaluations"])
    with contextlib.suppress(KeyError):
        if METHODS.get(plan.method).needs == "run":
            out["exact_scores_brute_force"] = brute_force_evaluations(plan.n_blocks, plan.n_prune)
    if plan.run_scores:
        out["run_scores_known"] = len(plan.run_scores)
    return out


def _log_tables(tracker: Tracker, plan: PrunePlan) -> None:
    dropped = set(plan.blocks)
    n = plan.n_blocks
    table: dict[str, list[Any]] = {"block": list(range(n)), "dropped": [i in dropped for i in range(n)]}
    for name, values in plan.scores.items():
        vals = [float(v) for v in values]
        table[name] = (vals + [None] * n)[:n]
    tracker.log_table(table, "tables/block_scores.json")
    ent = entropy_series(plan)
    if ent:
        tracker.log_table({
            "boundary": [f"{kind}_{i:03d}" for kind, (xs, _) in ent.items() for i in xs],
            "kind": [kind for kind, (xs, _) in ent.items() for _ in xs],
            "index": [i for _, (xs, _) in ent.items() for i in xs],
            "entropy": [h for _, (_, ys) in ent.items() for h in ys],
        }, "tables/entropy.json")
    if plan.run_scores:

        chosen = {run_key(g) for g in contiguous_groups(plan.blocks)}
        keys = sorted(plan.run_scores, key=parse_run_key)
        tracker.log_table({
            "run": keys,
            "start": [parse_run_key(k)[0] for k in keys],
            "length": [len(parse_run_key(k)) for k in keys],
            run_score_name(plan): [float(plan.run_scores[k]) for k in keys],
            "chosen": [k in chosen for k in keys],
        }, "tables/run_scores.json")

