"""Capture into one ActivationStore from several model actors (data-parallel replicas).

The driver lays the store out exactly as the single-process :func:`~blockprune.calibration.capture.capture`
would (same seeded global sample positions, same files), then each replica forwards a contiguous
range of whole batches and writes *its* rows (the sample rows are sorted by window, so a window
range owns a contiguous row range). Rows are written with ``pwrite`` at their byte offsets, not
through a shared memory map, so replicas on different nodes over a shared filesystem never
rewrite each other's pages. The statistic sums of the parts add up to the single-process sums.

Batches are aligned to the single-process batching, so every window sees the same batch
composition as in one process; arrays match to float tolerance (bitwise on the same kernels).

A file lock on the store path (``calibration.store.store_lock``, shared with the single-process path)
makes "capture once" hold across concurrent jobs: the second job
waits, then finds the finished store and reuses it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from blockprune.calibration.capture import capture_positions, finish_manifest, store_boundaries
from blockprune.calibration.stats import BlockStats
from blockprune.calibration.store import (
    ActivationStore,
    StoreWriter,
    float16_overflow,
)
from blockprune.errors import BlockpruneError
from blockprune.models.adapters import text_config

log = logging.getLogger(__name__)


def split_windows(n_windows: int, batch_size: int, parts: int) -> list[list[int]]:
    """Contiguous window ranges made of whole batches (the single-process batching), balanced.

    Never more parts than batches; empty parts are dropped.
    """
    if n_windows < 1 or batch_size < 1 or parts < 1:
        raise ValueError("n_windows, batch_size and parts must be >= 1")
    starts = list(range(0, n_windows, batch_size))
    parts = min(parts, len(starts))
    bounds = np.linspace(0, len(starts), parts + 1).round().astype(int)
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            lo = starts[a]
            hi = starts[b] if b < len(starts) else n_windows
            out.append(list(range(lo, hi)))
    return out


def mark_started(tmp: Path, part: int) -> None:
    """Append this attempt (pid, time) to ``part-<i>.attempts``: progress visible, restarts countable."""
    with (tmp / f"part-{part}.attempts").open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), "t": time.time()}) + "\n")


def attempts(tmp: Path, part: int) -> list[dict[str, Any]]:
    f = tmp / f"part-{part}.attempts"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


class RowWriter:
    """``write_rows`` into existing ``.npy`` files by byte offset (what capture hooks call)."""

    def __init__(self, directory: Path, dtype: str) -> None:
        self.dir = Path(directory)
        self.dtype = np.dtype(dtype)
        self._files: dict[str, tuple[int, int, int, int]] = {}  # name → (fd, data offset, row bytes, rows)

    def _open(self, name: str) -> tuple[int, int, int, int]:
        if name not in self._files:
            path = self.dir / f"{name}.npy"
            with path.open("rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
                offset = f.tell()
            if np.dtype(dtype) != self.dtype:
                raise ValueError(f"{path} holds {dtype}, expected {self.dtype}")
            self._files[name] = (os.open(path, os.O_WRONLY), offset, int(shape[1]) * self.dtype.itemsize,
                                 int(shape[0]))
        return self._files[name]

    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        if self.dtype == np.float16:
            float16_overflow(name, rows)
        fd, offset, row_bytes, n_rows = self._open(name)
        if start < 0 or start + len(rows) > n_rows:
            raise IndexError(f"rows {start}..{start + len(rows) - 1} of {name}, which has {n_rows}")
        if rows.ndim != 2 or rows.shape[1] * self.dtype.itemsize != row_bytes:
            raise ValueError(f"rows for {name} must be (n, {row_bytes // self.dtype.itemsize}), got {rows.shape}")
        data = np.ascontiguousarray(rows, dtype=self.dtype).tobytes()
        pos = offset + start * row_bytes
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, pos)
            view, pos = view[n:], pos + n

    def close(self) -> None:
        for fd, *_ in self._files.values():
            os.fsync(fd)
            os.close(fd)
        self._files.clear()


class SharedStoreWriter(StoreWriter):
    """A StoreWriter whose files are filled by other processes; the driver only lays out and commits."""

    def __init__(self, final_path: str | Path, names: list[str], n_rows: int, hidden: int, dtype: str) -> None:
        super().__init__(final_path, names, n_rows, hidden, dtype)
        for mm in self.arrays.values():
            mm.flush()
        self.names = list(names)
        self.arrays = {}  # release the layout maps: replicas write with pwrite

    def commit(self, manifest: dict[str, Any]) -> ActivationStore:
        self.arrays = {n: np.load(self.tmp / f"{n}.npy", mmap_mode="r+") for n in self.names}
        return super().commit(manifest)


def capture_layout(p: Any) -> tuple[np.ndarray, list[str], int, int]:
    """(positions, boundary names, n_layers, hidden) exactly as the single-process capture."""
    from transformers import AutoConfig

    settings = p.job.capture
    positions = capture_positions(p.windows, settings)
    cfg = text_config(AutoConfig.from_pretrained(p.resolved.path))
    hidden = int(cfg.hidden_size)
    n_layers = p.n_layers
    names = store_boundaries(n_layers, settings.capture_mid)
    return positions, names, n_layers, hidden


def capture_with_actors(p: Any, actors: list[Any], path: Path, meta: dict[str, Any],
                        store_dtype: str | None = None) -> ActivationStore:
    """Capture the store at ``path`` with one part per actor; the caller holds the store lock.

    ``store_dtype`` overrides the job's (the float32 fallback of a float16 capture that overflowed). A
    domain error raised in an actor (an overflow, NaN activations) is re-raised here as itself."""
    import dataclasses

    import ray

    settings = p.job.capture
    if store_dtype is not None:
        settings = dataclasses.replace(settings, store_dtype=store_dtype)
    windows = p.windows
    positions, names, n_layers, hidden = capture_layout(p)
    parts = split_windows(len(windows.input_ids), settings.batch_size, len(actors))
    writer = SharedStoreWriter(path, names, len(positions), hidden, settings.store_dtype)
    t0 = time.perf_counter()
    try:
        pos_ref = ray.put(positions)
        refs = [a.capture_part.remote(str(writer.tmp), pos_ref, part, i, settings.store_dtype)
                for i, (a, part) in enumerate(zip(actors, parts, strict=False))]
        try:
            results = ray.get(refs)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, BlockpruneError):
                raise e.cause from None
            raise
        streamed = [bool(r.pop("_streamed", False)) for r in results]
        stats = {g: BlockStats.from_dict(results[0][g]) for g in results[0]}
        for r in results[1:]:
            stats = {g: stats[g].merge(BlockStats.from_dict(r[g])) for g in stats}
        seconds = time.perf_counter() - t0
        restarts = {i: max(0, len(attempts(writer.tmp, i)) - 1) for i in range(len(parts))}
        manifest = finish_manifest(writer, meta, windows, positions, settings, stats, n_layers, hidden, seconds)
        manifest["capture_parts"] = [[part[0], part[-1]] for part in parts]
        if any(streamed):
            manifest["capture_path"] = "streamed"
        manifest["capture_restarts"] = restarts
        for f in writer.tmp.glob("part-*.attempts"):
            f.unlink()
        store = writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
    log.info("captured %d rows × %d boundaries with %d actor(s) in %.1f s → %s", len(positions), len(names),
             len(parts), seconds, store.path)
    return store


