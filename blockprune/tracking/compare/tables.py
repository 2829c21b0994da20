"""From plan rows to the comparison's tables: which columns, which are common to all plans, the best marks and
the agreement matrices. Pure functions of the rows; nothing here reads MLflow or draws.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from blockprune.errors import BadInputError
from blockprune.tracking.compare.comparison import (
    Agreement,
    Column,
    CompareConfig,
    Comparison,
    DenseRow,
    PlanRow,
)
from blockprune.tracking.figures import agreement_matrix


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
        Column("healed.ppl_ratio_before", "heal: ppl ×dense before", "min", ".3f"),
        Column("healed.ppl_ratio", "healed ppl ×dense", "min", ".3f"),
        Column("healed.gap_recovered", "log-gap recovered %", "max", ".0f",
               get=lambda r: None if (v := _num(r.metrics.get("healed.gap_recovered"))) is None else 100 * v),
        Column("healed.tokens", "heal tokens", None, "d"),
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
    groups: dict[tuple[str, str, int], list[PlanRow]] = {}
    for r in rows:
        groups.setdefault((r.model, r.granularity, r.n_prune), []).append(r)
    out = []
    for (model, gran, k), members in sorted(groups.items()):
        if len(members) < 2:
            continue
        labels = unique_labels(members)
        m = agreement_matrix([r.blocks for r in members])
        out.append(Agreement(model, gran, k, tuple(labels), tuple(tuple(float(x) for x in row) for row in m)))
    return out


def unique_labels(rows: Sequence[PlanRow]) -> list[str]:
    """Plan labels, with a run-id prefix where two plans of the same k would otherwise share one."""
    counts: dict[tuple[str, int], int] = {}
    for r in rows:
        counts[(r.label, r.n_prune)] = counts.get((r.label, r.n_prune), 0) + 1
    return [r.label if counts[(r.label, r.n_prune)] == 1 else f"{r.label} ({r.run_id[:6]})" for r in rows]


def assemble(cfg: CompareConfig, uri: str, experiment_id: str, parent: str | None, rows: Sequence[PlanRow],
             dense: Sequence[DenseRow]) -> Comparison:
    """The comparison of the rows ``fetch`` read (no figures yet): sorted rows, columns, best marks, agreement."""
    if not rows:
        where = f"under parent run {parent}" if parent else f"in experiment {cfg.experiment!r}"
        raise BadInputError(f"no trial runs {where} match the filters")
    ordered = sorted(rows, key=lambda r: (r.model, r.granularity, r.n_prune, r.label, r.start_time))
    cols, common = split_common(ordered, columns_for(ordered))
    return Comparison(cfg, uri, experiment_id, parent, ordered, list(dense), cols, mark_best(ordered, cols),
                      agreements(ordered), common)
