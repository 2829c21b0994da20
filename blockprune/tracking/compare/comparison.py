"""The data a comparison is made of: what to compare, one row per plan, the columns, the agreement matrices.

Plain frozen dataclasses (``Comparison`` is mutable only so figures can be attached after the tables), so
the table building, the figures and the renderers are functions of these and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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
