"""What a trial leaves in MLflow besides metrics: the plan, per-block score curves, tables, figures."""

from __future__ import annotations

from typing import Any

from blockprune.selection.plan import PrunePlan
from blockprune.tracking.tracker import Tracker


def log_trial(tracker: Tracker, plan: PrunePlan, metrics: dict[str, Any] | None = None) -> None:
    """Log ``plan.json`` and every per-block score as a metric curve (``step`` = block index)."""
    tracker.log_dict(plan.to_dict(), "plan.json")
    for name, values in plan.scores.items():
        tracker.log_series(f"score.{name}", values)
