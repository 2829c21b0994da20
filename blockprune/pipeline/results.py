"""A job's plans and numbers on local disk, written before anything is logged to MLflow.

Why: tracking is a service that can fail mid-run (a deleted or read-only store, a server gone); the
plans and perplexities a job computed must survive that. The job loop writes each trial's plan as soon
as it is selected and the results file after every step, then logs; a tracking failure costs the
MLflow record only.

Layout of a results folder (default ``$BLOCKPRUNE_CACHE/results/<UTC time>-<model>-<job id>/``; the
cache rather than the working directory, because the working directory of a ``ray job submit`` job is
a temporary copy deleted when it ends)::

    results.json              job, store, dense metrics, every trial (blocks, metrics, plan file, MLflow run)
    plan-01-<trial>.json      each trial's PrunePlan (``PrunePlan.load`` reads it)
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from blockprune.env import cache_dir
from blockprune.selection.plan import PrunePlan


def default_results_dir(model: str, job_id: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path(cache_dir()) / "results" / f"{stamp}-{slug(model)}-{job_id}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")[:80] or "x"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class ResultsFolder:
    """Writes a job's results as it goes; ``plan_out`` also receives the first trial's plan."""

    def __init__(self, path: str | Path, plan_out: str | Path | None = None) -> None:
        self.path = Path(path)
        self.plan_out = Path(plan_out) if plan_out else None
        self.data: dict[str, Any] = {"status": "running", "dense": {}, "trials": []}

    def _flush(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path / "results.json", json.dumps(self.data, indent=1, default=str) + "\n")

    def start(self, job: dict[str, Any], tracking: dict[str, Any]) -> None:
        self.data |= {"job": job, "tracking": tracking}
        self._flush()

    def set(self, **items: Any) -> None:
        """Top-level facts (store path and id, dense metrics, the MLflow parent run)."""
        self.data.update(items)
        self._flush()

    def plan(self, index: int, trial_name: str, plan: PrunePlan) -> Path:
        """Write a trial's plan (and ``plan_out`` for the first); returns its file."""
        self.path.mkdir(parents=True, exist_ok=True)
        f = self.path / f"plan-{index + 1:02d}-{slug(trial_name)}.json"
        _write_atomic(f, plan.to_json() + "\n")
        if index == 0 and self.plan_out is not None:
            _write_atomic(self.plan_out, plan.to_json() + "\n")
        return f

    def trial(self, index: int, record: dict[str, Any]) -> None:
        """Set (or update) the record of trial ``index``."""
        trials = self.data["trials"]
        while len(trials) <= index:
            trials.append({})
        trials[index].update(record)
        self._flush()

    def finish(self, status: str, **items: Any) -> None:
        self.data.update(items)
        self.data["status"] = status
        self._flush()
