"""Free-space checks before large writes, so a full disk fails in a millisecond, not mid-conversion.

``$BLOCKPRUNE_DISK_RESERVE_MB`` (default 256) is kept free on top of what a write needs: the cache
is shared by other jobs, which should not be starved by ours.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from blockprune.errors import DiskSpaceError

DEFAULT_RESERVE_MB = 256


def disk_reserve_bytes() -> int:
    raw = os.environ.get("BLOCKPRUNE_DISK_RESERVE_MB", str(DEFAULT_RESERVE_MB))
    try:
        mb = float(raw)
    except ValueError:
        raise DiskSpaceError(f"BLOCKPRUNE_DISK_RESERVE_MB must be a number of megabytes, got {raw!r}") from None
    return int(mb * (1 << 20))


def require_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`DiskSpaceError` unless ``folder``'s file system has ``needed`` bytes plus the reserve free."""
    free = shutil.disk_usage(folder).free
    reserve = disk_reserve_bytes()
    if free < needed + reserve:
        raise DiskSpaceError(
            f"not enough disk space in {folder} for {what}: needs {_gb(needed)} (+ {_gb(reserve)} kept free, "
            f"BLOCKPRUNE_DISK_RESERVE_MB), {_gb(free)} free; free some space or point BLOCKPRUNE_CACHE elsewhere"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
