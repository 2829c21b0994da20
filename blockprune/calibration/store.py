"""ActivationStore: sampled hidden states at every block boundary, on disk.

Layout of a store directory::

    manifest.json       model, revision, corpus, settings, dtype, stats, checksums
    positions.npy       (n_rows, 2) int64: (window, position) of each sampled token
    token_ids.npy       (n_rows,) the token at each sampled position
    h_000.npy …         boundary h_l: input of layer l (h_0) / output of layer l-1, shape (n_rows, d)
    m_000.npy …         mid stream of layer l: x + Attn(LN x), when captured

Every boundary array holds the SAME rows (tokens), so any pair is a paired sample for mutual
information. Arrays are written through memmaps and the directory is renamed into place only
when complete, so a crash never leaves a store that looks valid. The array files are reserved
on disk (``posix_fallocate``) before any row is written: a full disk is an error naming the
path, not a ``SIGBUS`` through the memory map.

A finished store is verified (sha256 of every array against the manifest) each time it is
reused: :func:`open_or_capture` is the one reuse-or-capture path of the local, Ray and study
runs, under the store's file lock. A store that no longer matches is moved aside and captured
again, with the score cache inside it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blockprune.errors import MissingFileError, ResourceError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STORE_FORMAT_VERSION = 1


def boundary_name(kind: str, index: int) -> str:
    if kind not in ("h", "m"):
        raise ValueError(f"boundary kind must be 'h' (between layers) or 'm' (mid-layer), got {kind!r}")
    return f"{kind}_{index:03d}"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class StoreCorruptError(ResourceError):
    """A store's files do not match its manifest."""


class StoreDtypeOverflowError(ResourceError, OverflowError):
    """Activations do not fit the store dtype (float16): the capture can be repeated in float32."""


class StoreDiskFullError(ResourceError):
    """The filesystem of a store has no room for it."""


def float16_overflow(name: str, rows: np.ndarray) -> None:
    """Raise :class:`StoreDtypeOverflowError` when ``rows`` do not fit float16 (two passes, no temporary)."""
    if not rows.size:
        return
    top = max(float(rows.max()), -float(rows.min()))
    if top > float(np.finfo(np.float16).max):
        raise StoreDtypeOverflowError(
            f"activations at {name} exceed the float16 range ({top:.3g}); capture with store dtype float32")


def disk_full(path: Path, needed: int | None, e: OSError) -> StoreDiskFullError:
    """A one-line error for a write that found the disk full (or over quota)."""
    free = shutil.disk_usage(existing_parent(path)).free
    need = f"needs {needed / 1e6:,.0f} MB, " if needed else ""
    return StoreDiskFullError(f"no space left for the activation store {path} ({need}{free / 1e6:,.0f} MB free "
                              f"on its filesystem; {os.strerror(e.errno or errno.ENOSPC)}); free space or pass "
                              "--store-root on a larger disk")


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (whose filesystem a new path would be on)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def reserve(path: Path, size: int) -> None:
    """Allocate ``size`` bytes of ``path`` on disk now, so that writes through a memory map cannot hit ENOSPC.

    Filesystems without ``fallocate`` (EOPNOTSUPP/EINVAL) are left as they are."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    finally:
        os.close(fd)


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@dataclass
class ActivationStore:
    """Read access to a finished store; arrays are memory-mapped (read-only)."""

    path: Path
    manifest: dict[str, Any]
    # what happened on the way to this store (a corrupt copy replaced, a dtype fallback): logged as tags
    notes: dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def open(cls, path: str | Path, verify: bool = False) -> ActivationStore:
        path = Path(path)
        mf = path / MANIFEST
        if not mf.exists():
            raise MissingFileError(f"{path} is not an activation store (no {MANIFEST})")
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise StoreCorruptError(f"{mf} is not readable JSON ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("format_version") != STORE_FORMAT_VERSION:
            version = manifest.get("format_version") if isinstance(manifest, dict) else None
            raise StoreCorruptError(f"{path}: unsupported store format {version}")
        store = cls(path, manifest)
        if verify:
            store.verify()
        return store

    def verify(self, threads: int | None = None) -> None:
        """Every array file against its manifest sha256 (the whole file, header included).

        Files are hashed on ``threads`` threads (default: up to 4, never more than the CPUs): hashlib and
        file reads release the GIL, so this scales with cores (benchmarks/bench_store_verify.py)."""
        from concurrent.futures import ThreadPoolExecutor

        checksums = self.manifest.get("checksums")
        if not isinstance(checksums, dict) or not checksums:
            raise StoreCorruptError(f"{self.path / MANIFEST} lists no checksums")
        checksums = {**checksums, **(self.manifest.get("aux_checksums") or {})}  # stores before aux: arrays only
        files = {name: self.path / f"{name}.npy" for name in checksums}
        for f in files.values():
            if not f.is_file():
                raise StoreCorruptError(f"{f} is missing")
        workers = threads or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            digests = dict(zip(files, pool.map(file_sha256, files.values()), strict=True))
        bad = sorted(name for name, digest in checksums.items() if digests[name] != digest)
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise StoreCorruptError(f"{files[bad[0]]} does not match its manifest checksum{more}")

    @property
    def checksum(self) -> str:
        """One digest for the whole store: the key under which scores are cached."""
        return hashlib.sha256(json.dumps(self.manifest["checksums"], sort_keys=True).encode()).hexdigest()[:16]

    @property
    def n_layers(self) -> int:
        return int(self.manifest["n_layers"])

    @property
    def n_rows(self) -> int:
        return int(self.manifest["n_rows"])

    @property
    def has_mid(self) -> bool:
        return bool(self.manifest["capture_mid"])

    @property
    def stats(self) -> dict[str, Any]:
        return self.manifest["stats"]

    def array(self, name: str) -> np.ndarray:
        f = self.path / f"{name}.npy"
        if not f.exists():
            raise KeyError(f"store {self.path} has no boundary {name!r}")
        return np.load(f, mmap_mode="r")

    def h(self, index: int) -> np.ndarray:
        """Hidden state at boundary ``index`` (0 = input of layer 0, L = output of the last layer)."""
        if not 0 <= index <= self.n_layers:
            raise IndexError(f"boundary {index} out of range 0..{self.n_layers}")
        return self.array(boundary_name("h", index))

    def mid(self, layer: int) -> np.ndarray:
        """Residual stream inside ``layer`` after its attention sub-block."""
        if not self.has_mid:
            raise KeyError("this store was captured without mid-layer boundaries (capture_mid=False)")
        return self.array(boundary_name("m", layer))

    def block_io(self, block: int, granularity: str = "layer") -> tuple[np.ndarray, np.ndarray]:
        """(input, output) arrays of block ``block`` at a granularity."""
        if granularity == "layer":
            return self.h(block), self.h(block + 1)
        if granularity == "attention":
            return self.h(block), self.mid(block)
        if granularity == "mlp":
            return self.mid(block), self.h(block + 1)
        raise ValueError(f"unknown granularity {granularity!r}")

    def positions(self) -> np.ndarray:
        return np.load(self.path / "positions.npy")

    def token_ids(self) -> np.ndarray:
        return np.load(self.path / "token_ids.npy")


class StoreWriter:
    """Creates a store in a temporary sibling directory and renames it into place on commit."""

    def __init__(self, final_path: str | Path, names: list[str], n_rows: int, hidden: int, dtype: str) -> None:
        self.final = Path(final_path)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.final.with_name(self.final.name + f".partial-{os.getpid()}")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.dtype = np.dtype(dtype)
        self.arrays: dict[str, np.memmap] = {}
        self.released: list[str] = []
        try:
            for n in names:
                self.arrays[n] = np.lib.format.open_memmap(self.tmp / f"{n}.npy", mode="w+", dtype=self.dtype,
                                                           shape=(n_rows, hidden))
                reserve(self.tmp / f"{n}.npy", self.arrays[n].offset + self.arrays[n].nbytes)
        except OSError as e:
            self.abort()
            if e.errno in _DISK_ERRNOS:
                raise disk_full(self.final, len(names) * n_rows * hidden * self.dtype.itemsize, e) from None
            raise
        except BaseException:  # interrupted (SIGTERM, Ctrl-C) while laying out: leave nothing behind
            self.abort()
            raise

    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        if self.dtype == np.float16:
            float16_overflow(name, rows)
        if name in self.released:  # written again after release (a second pass over it): map it again
            self.released.remove(name)
            self.arrays[name] = np.load(self.tmp / f"{name}.npy", mmap_mode="r+")
        self.arrays[name][start : start + len(rows)] = rows

    def release(self, name: str) -> None:
        """Unmap a boundary that is complete, so its written pages stop counting as this process's memory.

        Layer-streamed capture finishes one boundary per layer; resident capture writes all of them
        to the end and never calls this.
        """
        if self.arrays.pop(name, None) is not None:
            self.released.append(name)

    def save_array(self, name: str, arr: np.ndarray) -> None:
        try:
            np.save(self.tmp / f"{name}.npy", arr)
        except OSError as e:
            if e.errno in _DISK_ERRNOS:
                raise disk_full(self.final, None, e) from None
            raise

    def commit(self, manifest: dict[str, Any]) -> ActivationStore:
        checksums = {}
        for name in [*self.arrays, *self.released]:
            # no msync: read() goes through the page cache that the shared mapping writes into
            checksums[name] = file_sha256(self.tmp / f"{name}.npy")
        self.arrays.clear()
        # positions / token ids are verified too, outside "checksums" (whose digest is the store's id)
        aux = {f.stem: file_sha256(f) for f in sorted(self.tmp.glob("*.npy")) if f.stem not in checksums}
        manifest = {**manifest, "format_version": STORE_FORMAT_VERSION, "checksums": checksums,
                    "aux_checksums": aux}
        try:
            (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        except OSError as e:
            if e.errno in _DISK_ERRNOS:
                raise disk_full(self.final, None, e) from None
            raise
        if self.final.exists():
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        return ActivationStore.open(self.final)

    def abort(self) -> None:
        self.arrays.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def store_lock(path: Path) -> Any:
    """A file lock beside the store: "capture once" holds across processes and jobs sharing a filesystem."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(path.name + ".lock")))


CORRUPT_SUFFIX = ".corrupt"


def finished_store(path: Path, verify: bool = True) -> ActivationStore | None:
    """The finished store at ``path``, its checksums verified; ``None`` when there is none or it was corrupt
    (then moved aside, see :func:`check_finished`). Call it under :func:`store_lock`."""
    return check_finished(path, verify)[0]


def check_finished(path: Path, verify: bool = True) -> tuple[ActivationStore | None, str | None]:
    """(store, why a corrupt copy was moved aside): the finished store at ``path`` if it verifies.

    A corrupt store (an array changed, truncated or missing, an unreadable manifest) is moved aside to
    ``<path>.corrupt`` (replacing an older one) with a WARNING naming the file, so that the caller
    captures it again; the score cache inside it goes with it, so no score of it is ever reused."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        return None, None
    try:
        return ActivationStore.open(path, verify=verify), None
    except StoreCorruptError as e:
        aside = path.with_name(path.name + CORRUPT_SUFFIX)
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(path, aside)
        log.warning("activation store not reused: %s; moved it to %s (the scores cached in it go with it; "
                    "delete it when done) and capturing it again", e, aside)
        return None, str(e)


def open_or_capture(path: Path, capture: Callable[[str], ActivationStore], store_dtype: str,
                    verify: bool = True) -> tuple[ActivationStore, bool]:
    """(store, reused): the one reuse-or-capture path of every backend, under the store's file lock.

    A finished store is verified and reused; a corrupt one is moved aside and captured again; partial
    folders of crashed captures are removed before capturing. ``capture(dtype)`` writes the store at
    ``path`` in that dtype; a float16 capture whose activations overflow is repeated in float32 at the
    same path (the manifest records the dtype stored), with a WARNING."""
    path = Path(path)
    with store_lock(path):
        store, why = check_finished(path, verify=verify)
        if store is not None:
            log.info("reusing activation store %s (checksums verified, no recapture)", path)
            return store, True
        notes = {}
        if why is not None:
            notes["store_replaced_corrupt"] = why
        clear_stale_partials(path)
        try:
            store = capture(store_dtype)
        except StoreDtypeOverflowError as e:
            if store_dtype != "float16":
                raise
            log.warning("%s: capturing again in float32 (the store keeps its path; its manifest records float32)",
                        str(e).split(";")[0])
            notes["store_dtype_fallback"] = f"float16 → float32: {str(e).split(';')[0]}"
            store = capture("float32")
        store.notes.update(notes)
        return store, False


def clear_stale_partials(path: Path) -> None:
    """Left-overs of crashed captures of this store. Call it under :func:`store_lock` only: without the
    lock, another process's capture in progress would look the same."""
    for d in path.parent.glob(path.name + ".partial-*"):
        log.info("removing the partial capture %s left by a crashed run", d)
        shutil.rmtree(d, ignore_errors=True)
