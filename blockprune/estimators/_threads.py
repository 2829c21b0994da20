"""Thread-count helpers: one place that decides how many threads BLAS and the block workers use."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any


def default_threads() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


_controller: tuple[int, Any] | None = None  # (len(sys.modules) when built, ThreadpoolController)


def _blas_controller() -> Any:
    """A cached threadpoolctl controller: building one scans every loaded library (~2 ms), and the estimators
    enter blas_threads several times per call. Rebuilt whenever a module was imported since, because a new
    extension module may have loaded another BLAS."""
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - then BLAS keeps its own setting
        return None
    loaded = len(sys.modules)
    if _controller is None or _controller[0] != loaded:
        _controller = (loaded, ThreadpoolController())
    return _controller[1]


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Limit BLAS/LAPACK threads for a call. Also a speed fix: multi-threaded OpenBLAS eigh on a busy
    2-core machine was measured 100x slower than single-threaded for a 576 x 576 matrix."""
    controller = None if n is None else _blas_controller()
    if controller is None:
        yield
        return
    with controller.limit(limits=n, user_api="blas"):
        yield
