"""Prune plans side by side, read back from MLflow: what ``blockprune compare`` shows.

One step per module, each a function of the previous step's output:

- ``reading``: trial runs and their ``plan.json`` → :class:`PlanRow`, job parents → :class:`DenseRow`
  (the only module that talks to MLflow);
- ``tables``: rows → columns, values common to all plans, best marks, agreement (Jaccard) matrices;
- ``figures``: a :class:`Comparison` → PNG plots;
- ``render``: a :class:`Comparison` → terminal table, Markdown, self-contained HTML.

:func:`build` chains the first three; ``blockprune.jobs.compare`` is the command line around it. Importing
this package loads neither mlflow nor matplotlib: they are imported when runs are read or a figure is drawn.
"""

from __future__ import annotations

from blockprune.tracking.compare.comparison import (
    Agreement,
    Column,
    CompareConfig,
    Comparison,
    DenseRow,
    PlanRow,
)
from blockprune.tracking.compare.figures import make_figures
from blockprune.tracking.compare.reading import fetch, resolve_parent
from blockprune.tracking.compare.render import render_html, render_markdown, render_terminal, write_report
from blockprune.tracking.compare.tables import agreements, assemble, columns_for, mark_best, split_common

__all__ = [
    "Agreement", "Column", "CompareConfig", "Comparison", "DenseRow", "PlanRow", "agreements", "assemble", "build",
    "columns_for", "fetch", "make_figures", "mark_best", "render_html", "render_markdown", "render_terminal",
    "resolve_parent", "split_common", "write_report",
]


def build(cfg: CompareConfig) -> Comparison:
    """Read the runs and assemble the comparison (figures included unless ``cfg.figures`` is off)."""
    cmp = assemble(cfg, *fetch(cfg))
    if cfg.figures:
        cmp.figures = make_figures(cmp)
    return cmp
