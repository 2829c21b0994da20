"""``blockprune compare``: prune plans side by side, read back from MLflow.

Reads the trial runs of an experiment (or of one job's parent run), their metrics and their
``plan.json`` artifacts, and shows one row per plan: blocks dropped, parameters removed,
perplexity, task accuracies, speed and calibration cost, with the best value of each column
marked. Also the agreement (Jaccard of dropped blocks) between methods that pruned the same number
of blocks of the same model. Printed in the terminal, written as Markdown (figures as PNG files
beside it) and as one self-contained HTML page (figures embedded as base64 PNG, no external assets).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from blockprune.env import apply_env_defaults

apply_env_defaults()
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per plan.json is noise

EPILOG = """examples:
  blockprune compare                                   # every trial in experiment 'blockprune'
  blockprune compare --parent-run latest --out report/ # the last job only
  blockprune compare --method shortgpt --method mi_fbs --model smollm2-135m
  blockprune compare --tracking-uri http://head:5000 --experiment sweeps --granularity layer
"""

Best = Literal["min", "max"] | None
TRIAL_KIND = "trial"
JOB_KIND = "job"


@dataclass(frozen=True)
class CompareConfig:
    """What to compare and where to write it (from the command line)."""

    experiment: str = "blockprune"
    tracking_uri: str | None = None
    parent_run: str | None = None  # a run id, a run name, or "latest"
    models: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    estimators: tuple[str, ...] = ()
    granularities: tuple[str, ...] = ()
    n_prune: tuple[int, ...] = ()
    out: str | None = "blockprune-compare"
    max_runs: int = 1000
    figures: bool = True


@dataclass(frozen=True)
class PlanRow:
    """One trial run: identity, its plan (from ``plan.json``) and its metrics."""

    run_id: str
    run_name: str
    parent_run_id: str | None
    model: str
    method: str
    estimator: str | None
    granularity: str
    n_prune: int
    n_blocks: int
    blocks: tuple[int, ...]
    metrics: dict[str, float]
    plan: Any = None  # PrunePlan, when plan.json could be read
    start_time: int = 0

    @property
    def label(self) -> str:
        return f"{self.method}/{self.estimator}" if self.estimator else self.method


@dataclass(frozen=True)
class DenseRow:
    """The unpruned model's numbers, from a job's parent run (a reference, never 'best')."""

    run_id: str
    model: str
    metrics: dict[str, float]


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    best: Best = None
    fmt: str = ""
    get: Callable[[PlanRow], Any] | None = field(default=None, compare=False)
    dense: Callable[[DenseRow], Any] | None = field(default=None, compare=False)

    def value(self, row: PlanRow) -> Any:
        return self.get(row) if self.get else row.metrics.get(self.key)

    def dense_value(self, row: DenseRow) -> Any:
        return self.dense(row) if self.dense else None

    def format(self, v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "–"
        if self.fmt == "d":
            return f"{round(float(v)):d}"
        return format(v, self.fmt) if self.fmt else str(v)


@dataclass(frozen=True)
class Agreement:
    """Jaccard of dropped blocks between the plans of one (model, granularity, n_prune) group."""

    model: str
    granularity: str
    n_prune: int
    labels: tuple[str, ...]
    matrix: tuple[tuple[float, ...], ...]

    @property
    def title(self) -> str:
        return f"{self.model} · {self.granularity} · k={self.n_prune}"


@dataclass
class Comparison:
    """Everything a report shows; the renderers only format it."""

    config: CompareConfig
    tracking_uri: str
    experiment_id: str
    parent: str | None
    rows: list[PlanRow]
    dense: list[DenseRow]
    columns: list[Column]
    best: dict[str, set[int]]
    agreements: list[Agreement]
    common: list[tuple[Column, Any]] = field(default_factory=list)
    figures: list[tuple[str, str, bytes]] = field(default_factory=list)  # (file stem, title, png)

    def cell(self, col: Column, i: int) -> Any:
        return col.value(self.rows[i])


# --------------------------------------------------------------------------------------------- reading


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, name: str) -> Any:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no MLflow experiment named {name!r} at this tracking URI; known: {', '.join(names) or 'none'}")
    return exp


def resolve_parent(client: Any, experiment_id: str, ref: str) -> str:
    """A parent run from an id, a run name, or ``latest`` (the most recent job)."""
    if ref == "latest":
        runs = client.search_runs([experiment_id], f"tags.`blockprune.kind` = '{JOB_KIND}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise ValueError("no job (parent) runs in this experiment")
        return runs[0].info.run_id
    try:
        return client.get_run(ref).info.run_id
    except Exception:  # not an id: try it as a run name
        escaped = ref.replace("'", "\\'")
        runs = client.search_runs([experiment_id], f"attributes.run_name = '{escaped}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise ValueError(f"no run with id or name {ref!r} in this experiment") from None
        return runs[0].info.run_id


def _load_plan(client: Any, run_id: str) -> Any:
    from blockprune.selection.plan import PrunePlan

    with tempfile.TemporaryDirectory(prefix="blockprune-compare-") as d:
        try:
            path = client.download_artifacts(run_id, "plan.json", d)
        except Exception:  # a run without a plan (crashed trial) is shown from its params
            return None
        return PrunePlan.from_dict(json.loads(Path(path).read_text()))


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _row(client: Any, run: Any) -> PlanRow:
    params, tags = run.data.params, run.data.tags
    plan = _load_plan(client, run.info.run_id)
    if plan is not None:
        blocks, n_blocks = tuple(plan.blocks), plan.n_blocks
        model, method, estimator, gran = plan.model_id, plan.method, plan.estimator, plan.granularity
    else:
        blocks = tuple(int(b) for b in tags.get("blockprune.blocks", "").split(",") if b.strip())
        n_blocks = _int(run.data.metrics.get("n_blocks"))
        model, method, gran = params.get("model", tags.get("model", "?")), params.get("method", "?"), params.get(
            "granularity", "layer")
        estimator = params.get("estimator")
        estimator = None if estimator in (None, "none", "None") else estimator
    return PlanRow(
        run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id[:8],
        parent_run_id=tags.get("mlflow.parentRunId"), model=model, method=method, estimator=estimator,
        granularity=gran, n_prune=len(blocks) or _int(params.get("n_prune")), n_blocks=n_blocks, blocks=blocks,
        metrics=dict(run.data.metrics), plan=plan, start_time=run.info.start_time or 0,
    )


def fetch(cfg: CompareConfig) -> tuple[str, str, str | None, list[PlanRow], list[DenseRow]]:
    """(tracking URI, experiment id, parent run id, plan rows, dense rows) for a config."""
    from blockprune.tracking.tracker import check_store, default_tracking_uri

    uri = cfg.tracking_uri or default_tracking_uri()
    check_store(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ValueError(f"no MLflow store at {uri}; pass --tracking-uri or run from the folder holding mlflow.db")
    client = _client(uri)
    exp = _experiment(client, cfg.experiment)
    parent = resolve_parent(client, exp.experiment_id, cfg.parent_run) if cfg.parent_run else None
    flt = (f"tags.`mlflow.parentRunId` = '{parent}'" if parent
           else f"tags.`blockprune.kind` = '{TRIAL_KIND}'")
    runs = client.search_runs([exp.experiment_id], flt, order_by=["attributes.start_time ASC"],
                              max_results=cfg.max_runs)
    runs = [r for r in runs if _keep(cfg, r.data.params, r.data.tags)]
    rows = [_row(client, r) for r in runs]
    rows = [r for r in rows if _keep_row(cfg, r)]
    dense: list[DenseRow] = []
    for pid in dict.fromkeys(r.parent_run_id for r in rows if r.parent_run_id):
        try:
            prun = client.get_run(pid)
        except Exception:  # parent deleted: nothing to show as reference
            continue
        dm = {k.removeprefix("dense."): v for k, v in prun.data.metrics.items() if k.startswith("dense.")}
        if dm:
            model = prun.data.tags.get("model") or prun.data.params.get("model", "?")
            dense.append(DenseRow(pid, model, dm))
    return uri, exp.experiment_id, parent, rows, dense


def _keep(cfg: CompareConfig, params: dict[str, str], tags: dict[str, str]) -> bool:
    """Cheap filters on params, before any artifact is downloaded."""
    if cfg.models and params.get("model", tags.get("model")) not in cfg.models:
        return False
    if cfg.methods and params.get("method") not in cfg.methods:
        return False
    if cfg.estimators and params.get("estimator") not in cfg.estimators:
        return False
    return not (cfg.granularities and params.get("granularity") not in cfg.granularities)


def _keep_row(cfg: CompareConfig, r: PlanRow) -> bool:
    if cfg.n_prune and r.n_prune not in cfg.n_prune:
        return False
    return not (cfg.models and r.model not in cfg.models)


# ------------------------------------------------------------------------------------------- building


def _shown(c: Column, v: Any) -> float | None:
    """The value as the table prints it: two plans that read the same are a tie, not a win."""
    try:
        return _num(c.format(v).replace(",", ""))
    except (TypeError, ValueError):
        return _num(v)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def columns_for(rows: Sequence[PlanRow]) -> list[Column]:
    """The table's columns, keeping only those some row has a value for."""
    cols = [
        Column("plan", "plan", get=lambda r: r.label, dense=lambda d: "dense (unpruned)"),
        Column("model", "model", get=lambda r: r.model, dense=lambda d: d.model),
        Column("granularity", "gran.", get=lambda r: r.granularity),
        Column("n_prune", "k", get=lambda r: r.n_prune, fmt="d"),
        Column("blocks", "blocks dropped", get=lambda r: ",".join(map(str, r.blocks))),
        Column("params_removed", "params removed (M)", "max", ".2f",
               get=lambda r: None if (v := _num(r.metrics.get("params_removed"))) is None else v / 1e6),
        Column("params_removed_frac", "removed %", "max", ".1f",
               get=lambda r: None if (v := _num(r.metrics.get("params_removed_frac"))) is None else 100 * v),
        Column("ppl_pruned", "perplexity", "min", ".3f", dense=lambda d: d.metrics.get("ppl")),
        Column("ppl_ratio", "ppl ×dense", "min", ".3f", dense=lambda d: 1.0 if "ppl" in d.metrics else None),
    ]
    tasks = sorted({k.split(".")[1] for r in rows for k in r.metrics
                    if k.startswith("pruned.") and k.count(".") == 2 and k.rsplit(".", 1)[1] in ("acc", "acc_norm")})
    for t in tasks:
        for m in ("acc", "acc_norm"):
            key = f"pruned.{t}.{m}"
            cols.append(Column(key, f"{t} {m}", "max", ".3f",
                               dense=lambda d, t=t, m=m: d.metrics.get(f"{t}.{m}")))
    cols += [
        Column("latency.prefill_tokens_per_s", "prefill tok/s", "max", ".1f"),
        Column("latency.decode_tokens_per_s", "decode tok/s", "max", ".1f"),
        Column("exact_scores", "exact scores", None, "d"),
        Column("exact_scores_brute_force", "brute-force scores", None, "d"),
        Column("scoring_selection_seconds", "score+select s", "min", ".3f"),
        Column("capture_seconds", "capture s", "min", ".1f"),
        Column("tokens_calibrated", "tokens calibrated", None, "d"),
    ]
    always = {"plan", "model", "granularity", "n_prune", "blocks"}
    return [c for c in cols if c.key in always or any(_present(c.value(r)) for r in rows)]


# Context columns folded into one "common to all plans" line when every plan has the same value.
FOLDABLE = ("model", "granularity", "capture_seconds", "tokens_calibrated")


def split_common(rows: Sequence[PlanRow], columns: Sequence[Column]) -> tuple[list[Column], list[tuple[Column, Any]]]:
    """(columns to show, (column, shared value) folded out): keeps a one-job table narrow."""
    if len(rows) < 2:
        return list(columns), []
    shown, common = [], []
    for c in columns:
        vals = {json.dumps(c.value(r), default=str) for r in rows}
        if c.key in FOLDABLE and len(vals) == 1:
            common.append((c, c.value(rows[0])))
        else:
            shown.append(c)
    return shown, common


def _present(v: Any) -> bool:
    return v is not None and not (isinstance(v, float) and not math.isfinite(v))


def mark_best(rows: Sequence[PlanRow], columns: Sequence[Column]) -> dict[str, set[int]]:
    """Row indices holding each column's best value among comparable plans.

    Comparable = same model, granularity and number of blocks pruned (fewer blocks always wins on
    perplexity, more on parameters removed; that is not a finding). Ties are all marked; nothing
    is marked where every plan of a group has the same value.
    """
    groups: dict[tuple[str, str, int], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r.model, r.granularity, r.n_prune), []).append(i)
    best: dict[str, set[int]] = {}
    for c in columns:
        if c.best is None:
            continue
        for members in groups.values():
            vals = {i: v for i in members if (v := _shown(c, c.value(rows[i]))) is not None}
            if len(set(vals.values())) < 2:
                continue
            target = min(vals.values()) if c.best == "min" else max(vals.values())
            best.setdefault(c.key, set()).update(
                i for i, v in vals.items() if math.isclose(v, target, rel_tol=1e-12, abs_tol=0.0))
    return best


def agreements(rows: Sequence[PlanRow]) -> list[Agreement]:
    """One Jaccard matrix per (model, granularity, n_prune) with at least two plans."""
    from blockprune.tracking.figures import agreement_matrix

    groups: dict[tuple[str, str, int], list[PlanRow]] = {}
    for r in rows:
        groups.setdefault((r.model, r.granularity, r.n_prune), []).append(r)
    out = []
    for (model, gran, k), members in sorted(groups.items()):
        if len(members) < 2:
            continue
        labels = _unique_labels(members)
        m = agreement_matrix([r.blocks for r in members])
        out.append(Agreement(model, gran, k, tuple(labels), tuple(tuple(float(x) for x in row) for row in m)))
    return out


def _unique_labels(rows: Sequence[PlanRow]) -> list[str]:
    """Plan labels, with a run-id prefix where two plans of the same k would otherwise share one."""
    counts: dict[tuple[str, int], int] = {}
    for r in rows:
        counts[(r.label, r.n_prune)] = counts.get((r.label, r.n_prune), 0) + 1
    return [r.label if counts[(r.label, r.n_prune)] == 1 else f"{r.label} ({r.run_id[:6]})" for r in rows]


def build(cfg: CompareConfig) -> Comparison:
    """Read the runs and assemble the comparison (figures included unless ``cfg.figures`` is off)."""
    uri, exp_id, parent, rows, dense = fetch(cfg)
    if not rows:
        where = f"under parent run {parent}" if parent else f"in experiment {cfg.experiment!r}"
        raise ValueError(f"no trial runs {where} match the filters")
    rows.sort(key=lambda r: (r.model, r.granularity, r.n_prune, r.label, r.start_time))
    cols, common = split_common(rows, columns_for(rows))
    cmp = Comparison(cfg, uri, exp_id, parent, rows, dense, cols, mark_best(rows, cols), agreements(rows), common)
    if cfg.figures:
        cmp.figures = make_figures(cmp)
    return cmp


def make_figures(cmp: Comparison, max_plan_figures: int = 12) -> list[tuple[str, str, bytes]]:
    """The report's plots as PNG bytes: dropped blocks, perplexity vs k, score curves, entropy, run scores.

    Agreement is shown as tables (coloured in HTML), which read better than a heatmap picture.
    """
    from blockprune.tracking import figures as F

    out: list[tuple[str, str, bytes]] = []
    by_group: dict[tuple[str, str], list[PlanRow]] = {}
    for r in cmp.rows:
        by_group.setdefault((r.model, r.granularity), []).append(r)
    dense_ppl = {d.model: d.metrics.get("ppl") for d in cmp.dense}
    for (model, gran), members in by_group.items():
        stem = _stem(f"{model}_{gran}")
        n_blocks = max(r.n_blocks for r in members) or 1 + max(max(r.blocks, default=0) for r in members)
        labels = [f"{lbl} k={r.n_prune}" for lbl, r in zip(_unique_labels(members), members, strict=True)]
        title = f"dropped blocks · {model} · {gran}"
        out.append((f"dropped_blocks_{stem}", title,
                    F.to_png(F.dropped_grid_figure(labels, n_blocks, [r.blocks for r in members], title))))
        if len({r.n_prune for r in members}) > 1:
            points = [{"label": r.label, "n_prune": r.n_prune, "ppl": r.metrics.get("ppl_pruned")} for r in members]
            title = f"perplexity vs blocks pruned · {model} · {gran}"
            out.append((f"ppl_vs_pruned_{stem}", title,
                        F.to_png(F.ppl_vs_pruned_figure(points, dense_ppl.get(model), title))))
    # Per-block score curves: one panel per (model, granularity, score). Identical curves (BI is the
    # same for every plan of a store) are drawn once, labelled with the plans that selected on them;
    # a curve with one such plan rings the blocks it dropped (the dropped-blocks grid shows the rest).
    for (model, gran), members in by_group.items():
        names = list(dict.fromkeys(n for r in members if r.plan for n in r.plan.scores))
        for name in names:
            distinct: dict[tuple[float, ...], list[PlanRow]] = {}
            for r in members:
                if r.plan is not None and name in r.plan.scores:
                    vals = tuple(round(float(v), 12) for v in r.plan.scores[name])
                    owners = distinct.setdefault(vals, [])
                    if _selects_on(r.method, name):
                        owners.append(r)
            curves = []
            for vals, owners in distinct.items():
                label = _owners_label(owners) if owners else "(not selected on)"
                curves.append((label, list(vals), owners[0].blocks if len(owners) == 1 else ()))
            curves.sort(key=lambda c: c[0].startswith("("))
            title = f"{F.score_label(name)} per block · {model} · {gran}"
            out.append((f"score_{_stem(name)}_{_stem(model + '_' + gran)}", title,
                        F.to_png(F.score_overlay_figure(name, curves[:10]))))
    n = 0
    for r in cmp.rows:
        if r.plan is None or n >= max_plan_figures:
            continue
        if F.entropy_series(r.plan):
            out.append((f"entropy_{r.run_id[:8]}", f"entropy stages · {r.label} k={r.n_prune} · {r.model}",
                        F.to_png(F.entropy_figure(r.plan))))
            n += 1
        if r.plan.run_scores:
            from blockprune.tracking.artifacts import run_score_name

            out.append((f"run_scores_{r.run_id[:8]}", f"run scores · {r.label} k={r.n_prune} · {r.model}",
                        F.to_png(F.run_heatmap_figure(r.plan, run_score_name(r.plan)))))
            n += 1
    return out


def _selects_on(method: str, score: str) -> bool:
    from blockprune.selection import METHODS

    try:
        return METHODS.get(method).score == score
    except KeyError:
        return False


def _owners_label(owners: Sequence[PlanRow]) -> str:
    """``shortgpt k=2,3,4 · mi_greedy/mi.ksg k=3``: the plans that selected on one curve."""
    ks: dict[str, list[int]] = {}
    for r in owners:
        ks.setdefault(r.label, []).append(r.n_prune)
    return " · ".join(f"{lbl} k={','.join(map(str, sorted(set(k))))}" for lbl, k in ks.items())


def _stem(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s).strip("_")


# ------------------------------------------------------------------------------------------ rendering

STAR = "★"
LEGEND = ("★ best in its column among plans of the same model, granularity and k: lowest perplexity, ppl ratio "
          "and seconds; highest accuracy, parameters removed and tokens/s (ties all marked, nothing when all "
          "equal). Dense rows are references, never marked. "
          "exact scores: estimator calls the selection asked for (0 for methods that read per-block "
          "statistics); brute-force scores: what exhaustive search over the same runs would ask.")


def _cells(cmp: Comparison, i: int) -> list[str]:
    r = cmp.rows[i]
    out = []
    for c in cmp.columns:
        s = c.format(c.value(r))
        if i in cmp.best.get(c.key, ()):
            s += " " + STAR
        out.append(s)
    return out


def _dense_cells(cmp: Comparison, d: DenseRow) -> list[str]:
    return [c.format(c.dense_value(d)) if c.dense_value(d) is not None else "" for c in cmp.columns]


def _title(cmp: Comparison) -> str:
    scope = f"job {cmp.parent}" if cmp.parent else f"experiment {cmp.config.experiment!r}"
    return f"blockprune compare · {scope}"


def _common(cmp: Comparison) -> str:
    return " · ".join(f"{c.header} {c.format(v)}" for c, v in cmp.common)


def _filters(cfg: CompareConfig) -> str:
    parts = [f"{k}={','.join(map(str, v))}" for k, v in (("model", cfg.models), ("method", cfg.methods),
             ("estimator", cfg.estimators), ("granularity", cfg.granularities), ("k", cfg.n_prune)) if v]
    return "; ".join(parts) or "none"


def render_terminal(cmp: Comparison) -> str:
    """Aligned text table (numbers right-aligned) and the agreement matrices."""
    headers = [c.header for c in cmp.columns]
    body = [_dense_cells(cmp, d) for d in cmp.dense if _dense_relevant(cmp, d)]
    body += [_cells(cmp, i) for i in range(len(cmp.rows))]
    widths = [max(len(h), *(len(row[j]) for row in body)) for j, h in enumerate(headers)]
    numeric = [c.fmt != "" for c in cmp.columns]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True))

    lines = [_title(cmp), f"{len(cmp.rows)} plans · tracking {cmp.tracking_uri} · filters: {_filters(cmp.config)}"]
    if cmp.common:
        lines.append(f"common to all plans: {_common(cmp)}")
    lines += ["", line(headers), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in body]
    lines += ["", LEGEND]
    for a in cmp.agreements:
        lines += ["", f"agreement (Jaccard of dropped blocks) · {a.title}"]
        w = max(len(lbl) for lbl in a.labels)
        lines.append(" " * (w + 2) + "  ".join(f"{j:>5d}" for j in range(len(a.labels))))
        for j, (lbl, row) in enumerate(zip(a.labels, a.matrix, strict=True)):
            lines.append(f"{lbl:<{w}}  " + "  ".join(f"{v:5.2f}" for v in row) + f"   [{j}]")
    return "\n".join(lines)


def _dense_relevant(cmp: Comparison, d: DenseRow) -> bool:
    return any(r.parent_run_id == d.run_id for r in cmp.rows)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def render_markdown(cmp: Comparison, figure_dir: str | None = "figures") -> str:
    """GitHub-flavoured Markdown; figures referenced as files under ``figure_dir``."""
    align = ["---:" if c.fmt else ":---" for c in cmp.columns]
    out = [f"# {_title(cmp)}", "",
           f"- tracking: `{cmp.tracking_uri}` · experiment `{cmp.config.experiment}` (id {cmp.experiment_id})",
           f"- plans: {len(cmp.rows)} · filters: {_filters(cmp.config)} · generated "
           f"{dt.datetime.now().isoformat(timespec='seconds')}",
           *([f"- common to all plans: {_md_escape(_common(cmp))}"] if cmp.common else []), "", "## Plans", "",
           "| " + " | ".join(_md_escape(c.header) for c in cmp.columns) + " |", "| " + " | ".join(align) + " |"]
    for d in cmp.dense:
        if _dense_relevant(cmp, d):
            out.append("| " + " | ".join(f"*{_md_escape(s)}*" if s else "" for s in _dense_cells(cmp, d)) + " |")
    for i in range(len(cmp.rows)):
        cells = _cells(cmp, i)
        cells = [f"**{s}**" if s.endswith(STAR) else s for s in cells]
        out.append("| " + " | ".join(_md_escape(s) for s in cells) + " |")
    out += ["", LEGEND]
    if cmp.agreements:
        out += ["", "## Agreement of dropped blocks (Jaccard)"]
        for a in cmp.agreements:
            out += ["", f"### {a.title}", "", "| | " + " | ".join(map(_md_escape, a.labels)) + " |",
                    "|---|" + "---:|" * len(a.labels)]
            for lbl, row in zip(a.labels, a.matrix, strict=True):
                out.append(f"| {_md_escape(lbl)} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    if cmp.figures and figure_dir:
        out += ["", "## Figures"]
        for stem, title, _ in cmp.figures:
            out += ["", f"### {title}", "", f"![{title}]({figure_dir}/{stem}.png)"]
    out += ["", "## Runs", ""]
    for r in cmp.rows:
        out.append(f"- `{r.run_id}` {_md_escape(r.run_name)}: drops {r.granularity}s {list(r.blocks)}")
    return "\n".join(out) + "\n"


WIDE_FIGURES = ("dropped_blocks",)  # one row per plan, one column per block: needs the page width

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2330;background:#fff}
h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#556;margin:2px 0}.meta code{background:#f3f4f7;padding:1px 4px}
.wrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:6px 0}
th,td{border:1px solid #d6d9e0;padding:4px 8px;white-space:nowrap}
th{background:#eef1f6;position:sticky;top:0;font-weight:600;text-align:center;white-space:normal;max-width:7.5em;
font-size:13px;line-height:1.2;overflow-wrap:break-word}
table.agree th{max-width:11em}
td.num{text-align:right}td.txt{text-align:left}tr:nth-child(even) td{background:#fafbfc}
tr.dense td{background:#f4f4f4;color:#555;font-style:italic}
td.best{background:#dff3e3 !important;font-weight:700;color:#0b5d1e}
.legend{color:#556;font-size:13px}
table.agree td{min-width:48px;text-align:center}
figure{display:inline-block;margin:8px 14px 16px 0;vertical-align:top;max-width:calc(50% - 18px)}
figure.wide{display:block;max-width:100%}
figure img{max-width:100%;border:1px solid #e3e5ea}figcaption{font-size:13px;color:#445}
"""


def render_html(cmp: Comparison) -> str:
    """One self-contained page: inline CSS, figures as base64 PNG, no scripts, no external assets."""
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{e(_title(cmp))}</title><style>{CSS}</style></head><body>", f"<h1>{e(_title(cmp))}</h1>",
             f"<p class='meta'>tracking <code>{e(cmp.tracking_uri)}</code> · experiment "
             f"<code>{e(cmp.config.experiment)}</code> (id {e(cmp.experiment_id)}) · {len(cmp.rows)} plans · "
             f"filters: {e(_filters(cmp.config))} · generated {e(dt.datetime.now().isoformat(timespec='seconds'))}</p>",
             *([f"<p class='meta'>common to all plans: {e(_common(cmp))}</p>"] if cmp.common else []),
             "<h2>Plans</h2><div class='wrap'><table><thead><tr>"]
    parts += [f"<th>{e(c.header)}</th>" for c in cmp.columns]
    parts.append("</tr></thead><tbody>")
    for d in cmp.dense:
        if _dense_relevant(cmp, d):
            parts.append("<tr class='dense'>" + "".join(
                f"<td class='{'num' if c.fmt else 'txt'}'>{e(s)}</td>"
                for c, s in zip(cmp.columns, _dense_cells(cmp, d), strict=True)) + "</tr>")
    for i, r in enumerate(cmp.rows):
        tds = []
        for c in cmp.columns:
            s = c.format(c.value(r))
            best = i in cmp.best.get(c.key, ())
            cls = ("num" if c.fmt else "txt") + (" best" if best else "")
            title = f" title='{e(r.run_id)}'" if c.key == "plan" else ""
            tds.append(f"<td class='{cls}'{title}>{e(s)}{' ' + STAR if best else ''}</td>")
        parts.append("<tr>" + "".join(tds) + "</tr>")
    parts.append(f"</tbody></table></div><p class='legend'>{e(LEGEND)}</p>")
    if cmp.agreements:
        parts.append("<h2>Agreement of dropped blocks (Jaccard)</h2>")
        for a in cmp.agreements:
            parts.append(f"<h3>{e(a.title)}</h3><table class='agree'><tr><th></th>"
                         + "".join(f"<th>{e(lbl)}</th>" for lbl in a.labels) + "</tr>")
            for lbl, row in zip(a.labels, a.matrix, strict=True):
                cells = "".join(f"<td style='background:{_blue(v)};color:{'#fff' if v > 0.6 else '#000'}'>{v:.2f}</td>"
                                for v in row)
                parts.append(f"<tr><th>{e(lbl)}</th>{cells}</tr>")
            parts.append("</table>")
    if cmp.figures:
        parts.append("<h2>Figures</h2>")
        for stem, title, png in cmp.figures:
            b64 = base64.b64encode(png).decode("ascii")
            cls = " class='wide'" if stem.startswith(WIDE_FIGURES) else ""
            parts.append(f"<figure{cls}><img alt='{e(title)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{e(title)}</figcaption></figure>")
    parts.append("<h2>Runs</h2><ul>")
    for r in cmp.rows:
        parts.append(f"<li><code>{e(r.run_id)}</code> {e(r.run_name)}: drops {e(r.granularity)}s "
                     f"{e(str(list(r.blocks)))}</li>")
    parts.append("</ul></body></html>")
    return "\n".join(parts)


def _blue(v: float) -> str:
    """White → blue for 0 → 1 (inline style; no colour library needed in the page)."""
    v = min(max(v, 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * v) for c in (33, 102, 172))
    return f"#{r:02x}{g:02x}{b:02x}"


def write_report(cmp: Comparison, out: str | Path) -> dict[str, Path]:
    """``compare.md`` (+ ``figures/*.png``) and ``compare.html`` under ``out``."""
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for stem, _, png in cmp.figures:
        (out / "figures" / f"{stem}.png").write_bytes(png)
    md = out / "compare.md"
    md.write_text(render_markdown(cmp))
    page = out / "compare.html"
    page.write_text(render_html(cmp))
    return {"markdown": md, "html": page, "figures": out / "figures"}


# ------------------------------------------------------------------------------------------------ CLI


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="blockprune compare", description=__doc__, epilog=EPILOG,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="blockprune", help="MLflow experiment (default: blockprune)")
    p.add_argument("--parent-run", default=None,
                   help="only the trials of this job: its run id, run name, or 'latest' (default: every trial)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--model", action="append", default=[], help="keep this model only (repeatable)")
    p.add_argument("--method", action="append", default=[], help="keep this selection method only (repeatable)")
    p.add_argument("--estimator", action="append", default=[], help="keep this estimator only (repeatable)")
    p.add_argument("--granularity", action="append", default=[], choices=("layer", "attention", "mlp"),
                   help="keep this granularity only (repeatable)")
    p.add_argument("--prune", type=int, action="append", default=[], help="keep plans dropping this many blocks")
    p.add_argument("--out", default="blockprune-compare", help="folder for compare.md, compare.html, figures/")
    p.add_argument("--no-files", action="store_true", help="print the table only; write nothing")
    p.add_argument("--no-figures", action="store_true", help="skip the plots (faster)")
    p.add_argument("--max-runs", type=int, default=1000, help="at most this many trial runs (newest last)")
    return p


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    return CompareConfig(
        experiment=args.experiment, tracking_uri=args.tracking_uri, parent_run=args.parent_run,
        models=tuple(args.model), methods=tuple(args.method), estimators=tuple(args.estimator),
        granularities=tuple(args.granularity), n_prune=tuple(args.prune),
        out=None if args.no_files else args.out, max_runs=args.max_runs,
        figures=not args.no_figures and not args.no_files,
    )


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> int:
    import logging

    from blockprune.tracking.tracker import TrackingUnavailableError

    args = build_parser().parse_args(argv)
    for noisy in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = config_from_args(args)
    try:
        cmp = build(cfg)
    except (ValueError, KeyError, TrackingUnavailableError) as e:
        print(f"blockprune compare: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # an unreachable server or a broken store: say so, no traceback
        print(f"blockprune compare: error: cannot read runs from {cfg.tracking_uri or 'the default store'}: {e}",
              file=sys.stderr)
        return 2
    echo(render_terminal(cmp))
    if cfg.out:
        paths = write_report(cmp, cfg.out)
        echo(f"\n[blockprune] wrote {paths['markdown']} and {paths['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
