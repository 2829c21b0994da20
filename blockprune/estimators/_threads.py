"""Thread-count helpers: one place that decides how many threads BLAS and the block workers use."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def default_threads() -> int:
    """Cores this process may run on (cgroup/affinity aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Limit BLAS/LAPACK threads for a call. Also a speed fix: multi-threaded OpenBLAS eigh on a busy
    2-core machine was measured 100x slower than single-threaded for a 576 x 576 matrix."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - then BLAS keeps its own setting
        yield
        return
    if n is None:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield
