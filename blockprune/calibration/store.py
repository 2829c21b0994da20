"""ActivationStore: sampled hidden states at every block boundary, on disk.

Layout of a store directory::

    manifest.json       model, revision, corpus, settings, dtype, stats, checksums
    positions.npy       (n_rows, 2) int64: (window, position) of each sampled token
    token_ids.npy       (n_rows,) the token at each sampled position
    h_000.npy …         boundary h_l: input of layer l (h_0) / output of layer l-1, shape (n_rows, d)
    m_000.npy …         mid stream of layer l: x + Attn(LN x), when captured

Every boundary array holds the SAME rows (tokens), so any pair is a paired sample for mutual
information. Arrays are written through memmaps and the directory is renamed into place only
when complete, so a crash never leaves a store that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
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


@dataclass
class ActivationStore:
    """Read access to a finished store; arrays are memory-mapped (read-only)."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, verify: bool = False) -> ActivationStore:
        path = Path(path)
        mf = path / MANIFEST
        if not mf.exists():
            raise MissingFileError(f"{path} is not an activation store (no {MANIFEST})")
        manifest = json.loads(mf.read_text())
        if manifest.get("format_version") != STORE_FORMAT_VERSION:
            raise StoreCorruptError(f"{path}: unsupported store format {manifest.get('format_version')}")
        store = cls(path, manifest)
        if verify:
            store.verify()
        return store

    def verify(self) -> None:
        for name, digest in self.manifest["checksums"].items():
            f = self.path / f"{name}.npy"
            if not f.exists() or file_sha256(f) != digest:
                raise StoreCorruptError(f"{f} is missing or does not match the manifest checksum")

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
        self.arrays = {
            n: np.lib.format.open_memmap(self.tmp / f"{n}.npy", mode="w+", dtype=self.dtype, shape=(n_rows, hidden))
            for n in names
        }
        self.released: list[str] = []

    def write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        if self.dtype == np.float16 and rows.size:
            top = max(float(rows.max()), -float(rows.min()))  # two passes, no |rows| temporary
            if top > float(np.finfo(np.float16).max):
                raise OverflowError(
                    f"activations at {name} exceed the float16 range ({top:.3g}); capture with store dtype float32"
                )
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
        np.save(self.tmp / f"{name}.npy", arr)

    def commit(self, manifest: dict[str, Any]) -> ActivationStore:
        checksums = {}
        for name in [*self.arrays, *self.released]:
            # no msync: read() goes through the page cache that the shared mapping writes into
            checksums[name] = file_sha256(self.tmp / f"{name}.npy")
        self.arrays.clear()
        manifest = {**manifest, "format_version": STORE_FORMAT_VERSION, "checksums": checksums}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
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


def finished_store(path: Path) -> ActivationStore | None:
    return ActivationStore.open(path) if (path / MANIFEST).exists() else None


def clear_stale_partials(path: Path) -> None:
    """Left-overs of crashed captures of this store. Call it under :func:`store_lock` only: without the
    lock, another process's capture in progress would look the same."""
    for d in path.parent.glob(path.name + ".partial-*"):
        log.info("removing the partial capture %s left by a crashed run", d)
        shutil.rmtree(d, ignore_errors=True)
