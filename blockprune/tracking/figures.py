"""Figures of plans and jobs: per-block curves, entropy stages, run-score heatmaps, sweeps, agreement.

Why a module of its own: the same pictures go to MLflow (one trial, one job) and into the
``blockprune compare`` report, so they are built from plain data (plans, dicts), never from runs.
Figures are ``matplotlib.figure.Figure`` objects made without pyplot: no global state, no GUI
backend, safe in Ray workers and threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from blockprune.selection.fbs import contiguous_groups
from blockprune.selection.plan import PrunePlan, parse_run_key

DROP_COLOR = "#d62728"
LINE_COLOR = "#1f77b4"
CMAP = "viridis"

# Human names of per-block scores (the keys of ``PrunePlan.scores``).
SCORE_LABELS = {
    "bi": "Block Influence (1 − cos)",
    "delta_h": "entropy increase ΔH",
    "mi": "mutual information I(X; Y)",
    "relative_magnitude": "relative magnitude ‖f(x)‖/‖x+f(x)‖",
    "angular_distance": "angular distance",
}


def _figure(width: float = 7.0, height: float = 3.2) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def score_label(name: str) -> str:
    return SCORE_LABELS.get(name, name)


def plan_label(plan: PrunePlan) -> str:
    """``method/estimator`` (the estimator only where the method has one)."""
    return f"{plan.method}/{plan.estimator}" if plan.estimator else plan.method


def _mark_dropped(ax: Any, blocks: Sequence[int]) -> None:
    for b in blocks:
        ax.axvspan(b - 0.5, b + 0.5, color=DROP_COLOR, alpha=0.12, lw=0)


def block_score_figure(plan: PrunePlan, name: str) -> Any:
    """One per-block score as a curve (x = block index), dropped blocks shaded and ringed."""
    values = np.asarray(plan.scores[name], dtype=float)
    fig = _figure()
    ax = fig.add_subplot()
    x = np.arange(values.size)
    _mark_dropped(ax, plan.blocks)
    ax.plot(x, values, "o-", color=LINE_COLOR, ms=3.5, lw=1.2, label=score_label(name))
    dropped = [b for b in plan.blocks if b < values.size]
    if dropped:
        ax.plot(dropped, values[dropped], "o", mfc="none", mec=DROP_COLOR, ms=9, mew=1.6,
                label=f"dropped ({len(dropped)})")
    ax.set_xlabel(f"block ({plan.granularity}) index")
    ax.set_ylabel(name)
    ax.set_title(f"{score_label(name)} · {plan_label(plan)} · {plan.model_id}", fontsize=10)
    ax.set_xlim(-0.5, plan.n_blocks - 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def entropy_series(plan: PrunePlan) -> dict[str, tuple[list[int], list[float]]]:
    """``plan.info["entropy"]`` ({"h_003": H, "m_003": H, …}) → {"h": (indices, H), "m": (indices, H)}."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for key, value in sorted((plan.info.get("entropy") or {}).items()):
        kind, _, idx = str(key).partition("_")
        if kind in ("h", "m") and idx.isdigit():
            xs, ys = out.setdefault(kind, ([], []))
            xs.append(int(idx))
            ys.append(float(value))
    return out


def entropy_figure(plan: PrunePlan) -> Any:
    """Entropy H at every block boundary; the stage-1 region (never dropped) shaded up to ``s_start``.

    Boundary ``h_i`` is the residual stream after block ``i − 1`` (``h_0`` = embeddings), so block
    ``i`` maps ``h_i`` to ``h_{i+1}``; mid-layer boundaries ``m_i`` sit at ``i + 0.5``.
    """
    series = entropy_series(plan)
    fig = _figure()
    ax = fig.add_subplot()
    s_start = plan.info.get("s_start")
    if s_start is not None:
        ax.axvspan(0.0, float(s_start), color="#7f7f7f", alpha=0.15, lw=0, label="stage 1 (entropy falls; kept)")
        ax.axvline(float(s_start), color="k", ls="--", lw=1.2, label=f"stage boundary s_start = {s_start}")
    if "h" in series:
        ax.plot(*series["h"], "o-", color=LINE_COLOR, ms=3.5, lw=1.2, label="H(h_i), between layers")
    if "m" in series:
        xs, ys = series["m"]
        ax.plot([x + 0.5 for x in xs], ys, "s-", color="#ff7f0e", ms=3, lw=1, label="H(m_i), after attention")
    for i, b in enumerate(plan.blocks):
        ax.axvspan(b, b + 1, color=DROP_COLOR, alpha=0.12, lw=0, label="dropped block" if i == 0 else None)
    ax.set_xlabel("boundary index i (h_i = input of block i)")
    ax.set_ylabel("entropy H")
    est = f" ({plan.estimator})" if plan.estimator else ""
    ax.set_title(f"entropy per boundary{est} · {plan_label(plan)} · {plan.model_id}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def run_score_matrix(plan: PrunePlan) -> np.ndarray:
    """Run scores as a (max run length × n_blocks) matrix, NaN where no exact score was asked.

    Row ``ℓ − 1``, column ``s`` holds the score of the run ``s … s + ℓ − 1``.
    """
    runs = [(parse_run_key(k), float(v)) for k, v in plan.run_scores.items()]
    max_len = max((len(r) for r, _ in runs), default=0)
    m = np.full((max_len, plan.n_blocks), np.nan)
    for r, v in runs:
        m[len(r) - 1, r[0]] = v
    return m


def run_heatmap_figure(plan: PrunePlan, score_name: str = "score") -> Any:
    """Heatmap of the exact run scores (start block × run length); the chosen runs outlined."""
    from matplotlib.patches import Rectangle

    m = run_score_matrix(plan)
    fig = _figure(7.0, max(2.2, 1.1 + 0.32 * m.shape[0]))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(m)
    cmap = _cmap_with_bad(CMAP)
    im = ax.imshow(masked, aspect="auto", origin="lower", cmap=cmap, interpolation="nearest",
                   extent=(-0.5, m.shape[1] - 0.5, 0.5, m.shape[0] + 0.5))
    fig.colorbar(im, ax=ax, label=score_name, shrink=0.9)
    for g in contiguous_groups(plan.blocks):
        if len(g) <= m.shape[0]:
            ax.add_patch(Rectangle((g[0] - 0.5, len(g) - 0.5), 1, 1, fill=False, ec=DROP_COLOR, lw=2))
    n_asked = int(np.isfinite(m).sum())
    ax.set_xlabel("first block of the run")
    ax.set_ylabel("run length")
    ax.set_yticks(range(1, m.shape[0] + 1))
    ax.set_title(f"run {score_name}: {n_asked} exact scores known (grey: none) · red: dropped runs · "
                 f"{plan_label(plan)}", fontsize=9)
    return fig


def _cmap_with_bad(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#e6e6e6")


def ppl_vs_pruned_figure(points: Sequence[Mapping[str, Any]], dense_ppl: float | None = None,
                         title: str = "perplexity vs blocks pruned") -> Any:
    """One line per plan family (``label``) through (``n_prune``, ``ppl``); dense perplexity at 0.

    Log scale on y when perplexities span more than 20×, since removing blocks blows it up.
    """
    fig = _figure(7.0, 3.8)
    ax = fig.add_subplot()
    families: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        if p.get("ppl") is not None and math.isfinite(float(p["ppl"])):
            families.setdefault(str(p["label"]), []).append((int(p["n_prune"]), float(p["ppl"])))
    ys: list[float] = []
    for label, pts in sorted(families.items()):
        pts.sort()
        if dense_ppl is not None:
            pts = [(0, dense_ppl), *pts]
        ax.plot([k for k, _ in pts], [v for _, v in pts], "o-", ms=4, lw=1.3, label=label)
        ys += [v for _, v in pts]
    if dense_ppl is not None:
        ax.axhline(dense_ppl, color="k", ls=":", lw=1, label=f"dense ({dense_ppl:.2f})")
        ys.append(dense_ppl)
    if ys and min(ys) > 0 and max(ys) / min(ys) > 20:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("blocks pruned")
    ax.set_ylabel("perplexity (held-out)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|A ∩ B| / |A ∪ B| of two dropped-block sets (1.0 for two empty sets)."""
    sa, sb = set(a), set(b)
    union = sa | sb
    return 1.0 if not union else len(sa & sb) / len(union)


def agreement_matrix(blocks: Sequence[Sequence[int]]) -> np.ndarray:
    n = len(blocks)
    return np.array([[jaccard(blocks[i], blocks[j]) for j in range(n)] for i in range(n)])


def agreement_figure(labels: Sequence[str], matrix: np.ndarray, title: str = "agreement (Jaccard)") -> Any:
    """Jaccard heatmap with the values written in the cells."""
    n = len(labels)
    size = max(3.2, 1.6 + 0.55 * n)
    fig = _figure(size + 1.6, size)
    ax = fig.add_subplot()
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), labels, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def dropped_grid_figure(labels: Sequence[str], n_blocks: int, blocks: Sequence[Sequence[int]],
                        title: str = "dropped blocks") -> Any:
    """Plans × blocks grid, a filled cell per dropped block: where methods agree at a glance."""
    grid = np.zeros((len(labels), n_blocks))
    for i, bs in enumerate(blocks):
        for b in bs:
            if 0 <= b < n_blocks:
                grid[i, b] = 1
    fig = _figure(min(14.0, 3.0 + 0.3 * n_blocks), 1.1 + 0.3 * max(len(labels), 2))
    ax = fig.add_subplot()
    ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0, vmax=1.4, interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.set_xticks(range(n_blocks), [str(i) for i in range(n_blocks)], fontsize=8)
    ax.set_xticks(np.arange(-0.5, n_blocks), minor=True)
    ax.set_yticks(np.arange(-0.5, len(labels)), minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("block index")
    ax.set_title(title, fontsize=10)
    return fig


def score_overlay_figure(name: str, curves: Sequence[tuple[str, Sequence[float], Sequence[int]]]) -> Any:
    """Several plans' curves of one per-block score, each plan's dropped blocks ringed on its curve."""
    fig = _figure(7.0, 3.4)
    ax = fig.add_subplot()
    for i, (label, values, dropped) in enumerate(curves):
        color = f"C{i % 10}"
        v = np.asarray(values, dtype=float)
        ax.plot(np.arange(v.size), v, "o-", ms=3, lw=1.1, color=color, label=label)
        d = [b for b in dropped if b < v.size]
        if d:
            ax.plot(d, v[d], "o", mfc="none", mec=color, ms=9, mew=1.5)
    ax.set_xlabel("block index" + (" (rings: blocks that plan dropped)" if any(d for _, _, d in curves) else ""))
    ax.set_ylabel(name)
    ax.set_title(score_label(name), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def to_png(fig: Any, dpi: int = 100) -> bytes:
    """PNG bytes of a figure (for base64 embedding and for files beside a Markdown report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
