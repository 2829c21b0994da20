"""The study report's figures: ppl× / accuracy curves per method family, accuracy against perplexity, and the
dropped-blocks grid. Drawn from a :class:`Study` only; matplotlib is imported when a figure is drawn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blockprune.study.markdown import fmt
from blockprune.study.tables import Row, Study, display, family
from blockprune.tracking.figures import dropped_grid_figure

FAMILIES = (("base", "ShortGPT and baselines"), ("entrodrop", "EntroDrop"), ("mi", "MI-PRUN"))  # one panel each
MARKERS = "osD^vPX"  # shrinking markers of distinct shapes: methods that chose the same plans stay visible


def save_figure(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def curve_figure(study: Study, model: str, granularity: str, what: str) -> Any:
    """ppl× (log scale, min–max over calibrations as a band) or average accuracy vs blocks pruned; one
    panel per method family on a shared y axis, ShortGPT (black) repeated in each as the yardstick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = study.cells(model, granularity)
    by_n = {n: {r.method: r for r in study.rows(model, granularity, n)} for n in cells}  # once, not per method
    methods = study.methods(model, granularity)
    panels = [(f, title, [m for m in methods if family(m) == f]) for f, title in FAMILIES]
    panels = [p for p in panels if p[2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels) + 0.6, 4.4), sharey=True, squeeze=False)
    dense = study.avg_accuracy(study.dense(model)) if what == "acc" else None
    for ax, (fam, title, members) in zip(axes[0], panels, strict=True):
        shown = members if fam == "base" or "shortgpt" not in methods else ["shortgpt", *members]
        for i, mid in enumerate(shown):
            color = "k" if mid == "shortgpt" else plt.get_cmap("tab10")(i % 10)
            _curve(ax, by_n, cells, mid, what, color, MARKERS[i % len(MARKERS)], 7.0 - 0.6 * (i % len(MARKERS)),
                   yardstick=mid == "shortgpt" and fam != "base", label=study.name(mid))
        if dense is not None:
            ax.axhline(dense, color="k", lw=0.8, ls=":", label="dense")
            draw_floors(ax, study)
        ax.set_xlabel(f"{granularity} blocks pruned")
        ax.set_xticks(cells)
        ax.grid(alpha=0.3)
        ax.set_title("ShortGPT" if members == ["shortgpt"] else title, fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    if what == "ppl":
        axes[0][0].set_yscale("log")
        axes[0][0].set_ylabel("perplexity ÷ dense (geo-mean over corpora)")
    else:
        axes[0][0].set_ylabel("average accuracy")
    fig.suptitle(f"{model}: {granularity} pruning (band: min–max over calibrations)", fontsize=10)
    return fig


FLOORS = (("chance", "chance (random guess)", "-."), ("constant", "best constant answer", (0, (1, 3))))


def draw_floors(ax: Any, study: Study) -> None:
    """The answer baselines' average accuracy as grey lines (nothing before the baseline run exists)."""
    for what, label, ls in FLOORS:
        floor = study.baseline_accuracy(what)[1]
        if floor is not None:
            ax.axhline(floor, color="0.45", lw=0.9, ls=ls, label=label)


def _curve(ax: Any, by_n: dict[int, dict[str, Row]], cells: Sequence[int], mid: str, what: str, color: Any,
           marker: str, size: float, yardstick: bool, label: str = "") -> None:
    xs, ys, lo, hi = [], [], [], []
    for n in cells:
        row = by_n[n].get(mid)
        y = None if row is None else row.ppl_ratio if what == "ppl" else row.avg_acc
        if row is None or y is None:
            continue
        xs.append(n)
        ys.append(y)
        span = (row.ppl_ratio_all if what == "ppl" else row.acc_all) or [y]
        lo.append(min(span))
        hi.append(max(span))
    if not xs:
        return
    ax.plot(xs, ys, "--" if yardstick else "-", marker=marker, ms=size, lw=1.1 if yardstick else 1.4, color=color,
            alpha=0.7 if yardstick else 1.0, label=label or display(mid))
    if not yardstick and any(h > low for h, low in zip(hi, lo, strict=True)):
        ax.fill_between(xs, lo, hi, color=color, alpha=0.12, lw=0)


def tradeoff_figure(study: Study, measured: dict[str, list[Any]] | None = None) -> Any:
    """Average accuracy against ppl× (log) for every measured plan, one panel per model, with the dense model
    and the answer baselines as lines: where the cheap number and the expensive one agree, and where the
    accuracies sit on the floor. ``measured``: each model's ``measured_plans`` when the caller has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = measured if measured is not None else {m: study.measured_plans(m) for m in study.models}
    models = [m for m in study.models if measured[m]]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        plans = measured[m]
        for gran, color in (("layer", "tab:blue"), ("attention", "tab:orange")):
            pts = [(r, study.avg_accuracy(ev)) for ev, r in plans if ev.plan_key.split("|")[1] == gran]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, alpha=0.7, color=color,
                           label=f"{gran} plans ({len(pts)})")
        dense = study.avg_accuracy(study.dense(m))
        if dense is not None:
            ax.axhline(dense, color="k", lw=0.8, ls=":", label="dense")
        draw_floors(ax, study)
        rho = study.ppl_accuracy_correlation(m, plans)["avg"]
        ax.set_xscale("log")
        ax.set_xlabel("perplexity ÷ dense (geo-mean over corpora)")
        ax.set_title(f"{m}: Spearman ρ = {fmt(rho)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("average accuracy")
    fig.suptitle("Accuracy against perplexity, every plan of every calibration", fontsize=10)
    return fig


def dropped_figure(study: Study, model: str, granularity: str, n_prune: int, n_blocks: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")

    rows = study.rows(model, granularity, n_prune)
    return dropped_grid_figure([study.name(r.method) for r in rows], n_blocks, [r.blocks for r in rows],
                               title=f"{model}: {granularity} blocks dropped at n={n_prune} (reference calibration)")
