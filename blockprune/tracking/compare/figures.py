"""The comparison's plots as PNG bytes: which figures a set of plans calls for, drawn with
:mod:`blockprune.tracking.figures` (matplotlib is imported there, when a figure is drawn)."""

from __future__ import annotations

from collections.abc import Sequence

from blockprune.selection import METHODS
from blockprune.tracking import figures as F
from blockprune.tracking.artifacts import run_score_name
from blockprune.tracking.compare.comparison import Comparison, PlanRow
from blockprune.tracking.compare.tables import unique_labels


def make_figures(cmp: Comparison, max_plan_figures: int = 12) -> list[tuple[str, str, bytes]]:
    """The report's plots as PNG bytes: dropped blocks, perplexity vs k, score curves, entropy, run scores.

    Agreement is shown as tables (coloured in HTML), which read better than a heatmap picture.
    """
    out: list[tuple[str, str, bytes]] = []
    by_group: dict[tuple[str, str], list[PlanRow]] = {}
    for r in cmp.rows:
        by_group.setdefault((r.model, r.granularity), []).append(r)
    dense_ppl = {d.model: d.metrics.get("ppl") for d in cmp.dense}
    for (model, gran), members in by_group.items():
        stem = _stem(f"{model}_{gran}")
        n_blocks = max(r.n_blocks for r in members) or 1 + max(max(r.blocks, default=0) for r in members)
        labels = [f"{lbl} k={r.n_prune}" for lbl, r in zip(unique_labels(members), members, strict=True)]
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
            out.append((f"run_scores_{r.run_id[:8]}", f"run scores · {r.label} k={r.n_prune} · {r.model}",
                        F.to_png(F.run_heatmap_figure(r.plan, run_score_name(r.plan)))))
            n += 1
    return out


def _selects_on(method: str, score: str) -> bool:
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
