"""Fault injection for the Ray tests, loaded into every worker by ``worker_process_setup_hook``.

``test.crash_once`` is a real estimator (``mi.ksg``) that kills its own worker process with
SIGKILL the first time it sees a marker path that does not exist yet: a real worker death, which
Ray must answer by re-running the task elsewhere.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any


def crash_once(x: Any, y: Any = None, *, marker: str, **params: Any) -> float:
    from blockprune import estimators

    m = Path(marker)
    if not m.exists():
        m.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return estimators.get("mi.ksg")(x, y, **params)


def setup() -> None:
    """Register ``test.crash_once`` (idempotent; runs in the driver and in each worker)."""
    from blockprune.estimators import ESTIMATORS, register

    if "test.crash_once" not in ESTIMATORS:
        register("test.crash_once", "mi")(crash_once)


def teardown() -> None:
    """Remove ``test.crash_once`` from the driver's registry so later tests see only the real estimators."""
    from blockprune.estimators import ESTIMATORS

    ESTIMATORS.unregister("test.crash_once")
