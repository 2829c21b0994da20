"""Helpers shared by the Ray tests (a plain module: conftest files are not importable by name)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from blockprune.calibration.capture import CaptureSettings
from blockprune.pipeline.config import EvalSettings, JobConfig, TrialSpec
from blockprune.selection.plan import CalibrationSettings

MODEL = "smollm2-135m"
TRIALS = (
    TrialSpec("shortgpt", 4),
    TrialSpec("entrodrop", 4, estimator="entropy.knn"),
    TrialSpec("mi_fbs", 8, estimator="mi.ksg"),  # 8 of 30: FBS needs 3 rounds of new scores
)


def tiny_job(store_root: str | Path | None, trials: tuple[TrialSpec, ...] = TRIALS, corpus: str = "lee-news",
             seed: int = 0) -> JobConfig:
    """The smallest real job: 4 windows × 64 tokens, 256 sampled rows, 2 held-out windows."""
    return JobConfig(
        model=MODEL,
        calibration=CalibrationSettings(corpus, 4, 64, seed),
        trials=trials,
        capture=CaptureSettings(sample_rows=256, store_dtype="float32", batch_size=2, seed=seed),
        evaluation=EvalSettings(windows=2, batch_size=2),
        store_root=None if store_root is None else str(store_root),
    )


def in_private_netns() -> bool:
    """True when loopback is the only interface (we are inside ``unshare --net``)."""
    import psutil

    return set(psutil.net_if_addrs()) <= {"lo"}


def require_private_netns() -> None:
    if not in_private_netns() and os.environ.get("BLOCKPRUNE_ALLOW_HOST_NETWORK") != "1":
        pytest.skip("Ray tests run only inside a private network namespace: "
                    "bash scripts/in-netns.sh .venv/bin/python -m pytest tests/distributed")


@dataclass
class Reference:
    """The single-process result every Ray path must reproduce."""

    job: JobConfig
    store: Any
    plans: dict[str, Any]  # trial name → PrunePlan


def with_trials(job: JobConfig, *trials: TrialSpec) -> JobConfig:
    return replace(job, trials=tuple(trials))
