"""Scores of blocks and runs of blocks, computed from an ActivationStore with a named estimator.

Every exact score is cached on disk beside the store, keyed by (store checksum, estimator,
params, granularity, run), so a rerun or a crashed job never recomputes one. The same
:func:`score_one` is what a Ray scoring task runs, so single-process and distributed scores are
identical by construction.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from blockprune.calibration.store import ActivationStore
from blockprune.calibration.store import boundary_name as bn
from blockprune.selection.plan import run_key

Run = tuple[int, ...]


def _check_run(run: Run, n_blocks: int) -> Run:
    run = tuple(int(i) for i in run)
    if not run or any(b - a != 1 for a, b in zip(run, run[1:], strict=False)):
        raise ValueError(f"a run must be non-empty and contiguous, got {run}")
    if run[0] < 0 or run[-1] >= n_blocks:
        raise ValueError(f"run {run} out of range for {n_blocks} blocks")
    return run


def estimator_rows(store: ActivationStore, estimator: str, rows: np.ndarray | None = None) -> np.ndarray | None:
    """The store rows an estimator sees: ``rows`` when given; otherwise every row, except that a pooled
    estimator skips the BOS rows a store keeps for per-window estimators (``bos_row_kept``), so that
    keeping them changes nothing for the other estimators."""
    if rows is not None or not store.manifest.get("bos_row_kept"):
        return rows
    from blockprune import estimators

    if estimators.get(estimator).pooling == "window":
        return None
    return np.flatnonzero(store.positions()[:, 1] != 0)


def run_arrays(store: ActivationStore, run: Run, granularity: str) -> tuple[np.ndarray, np.ndarray]:
    """(input of the run's first block, output of its last) at a granularity."""
    if len(run) == 1 or granularity == "layer":
        x, _ = store.block_io(run[0], granularity)
        _, y = store.block_io(run[-1], granularity)
        return x, y
    raise ValueError("runs longer than one block are defined for whole layers only")


def score_one(store: ActivationStore, estimator: str, params: dict[str, Any], run: Run, granularity: str = "layer",
              rows: np.ndarray | None = None) -> float:
    """One exact score: the estimator on (input, output) of the run (pure, cacheable)."""
    from blockprune import estimators

    fn = estimators.get(estimator)
    x, y = run_arrays(store, run, granularity)
    if rows is not None:
        x, y = x[rows], y[rows]
    return float(fn(np.asarray(x), np.asarray(y), **params))


def window_slices(store: ActivationStore, rows: np.ndarray | None = None) -> list[tuple[int, slice]]:
    """(window id, row slice) of each calibration window among the store's rows (or the ``rows`` subset).

    A store's rows are sorted by (window, position), so each window is one contiguous slice."""
    win = store.positions()[:, 0]
    if rows is not None:
        win = win[np.asarray(rows)]
    if win.size and np.any(np.diff(win) < 0):
        raise ValueError("rows must keep the store's (window, position) order to be grouped by window")
    ids, starts = np.unique(win, return_index=True)
    ends = [*starts[1:], win.size]
    return [(int(w), slice(int(a), int(b))) for w, a, b in zip(ids, starts, ends, strict=True)]


def entropy_one(store: ActivationStore, estimator: str, params: dict[str, Any], boundary: str,
                rows: np.ndarray | None = None) -> float:
    """Entropy of one boundary: of all its rows (``pooling="pooled"``), or the mean over calibration windows
    of the entropy of each window's rows (``pooling="window"``, EntroDrop's released code)."""
    from blockprune import estimators

    spec = estimators.get(estimator)
    x = store.array(boundary)
    if rows is not None:
        x = x[rows]
    if spec.pooling != "window":
        return float(spec(np.asarray(x), **params))
    values = []
    for w, sl in window_slices(store, rows):
        try:
            values.append(float(spec(np.asarray(x[sl]), **params)))
        except ValueError as e:
            e.add_note(f"blockprune: {estimator} on window {w} of {boundary} ({sl.stop - sl.start} rows); "
                       "per-window estimators need whole windows (capture with sampling='windows')")
            raise
    if not values:
        raise ValueError(f"{boundary} has no rows to estimate an entropy from")
    return float(np.mean(values))


def params_key(estimator: str, params: dict[str, Any], granularity: str, extra: str = "") -> str:
    payload = json.dumps({"e": estimator, "p": params, "g": granularity, "x": extra}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ScoreCache:
    """A JSON file of exact scores beside the store; written atomically after each batch."""

    def __init__(self, store: ActivationStore, key: str, meta: dict[str, Any]) -> None:
        self.path = Path(store.path) / "scores" / f"{key}.json"
        self.meta = meta
        self.values: dict[str, float] = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("store") == store.checksum:
                self.values = {k: float(v) for k, v in data["values"].items()}
        self.store_checksum = store.checksum
        self.hits = 0

    def get(self, key: str) -> float | None:
        v = self.values.get(key)
        if v is not None:
            self.hits += 1
        return v

    def put_many(self, items: dict[str, float]) -> None:
        if not items:
            return
        self.values.update(items)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"store": self.store_checksum, "meta": self.meta, "values": self.values}, indent=0))
        os.replace(tmp, self.path)


class StoreRunScorer:
    """``score_run`` for selection: exact estimator scores of runs, cached on disk.

    Implements the batch protocol (``score_runs``) so that a subclass can compute a batch in
    parallel (see :mod:`blockprune.distributed.scoring`).
    """

    def __init__(self, store: ActivationStore, estimator: str, params: dict[str, Any] | None = None,
                 granularity: str = "layer", rows: np.ndarray | None = None, use_cache: bool = True) -> None:
        self.store = store
        self.estimator = estimator
        self.params = dict(params or {})
        self.granularity = granularity
        self.rows = rows = estimator_rows(store, estimator, rows)
        self.n_blocks = store.n_layers
        extra = "" if rows is None else hashlib.sha256(np.asarray(rows).tobytes()).hexdigest()[:12]
        key = params_key(estimator, self.params, granularity, extra)
        meta = {"estimator": estimator, "params": self.params, "granularity": granularity}
        self.cache = ScoreCache(store, key, meta) if use_cache else None
        self.computed = 0  # exact scores computed (not read from the cache)
        self.batches = 0  # calls of ``compute``: round trips when a subclass fans out

    def compute(self, runs: Sequence[Run]) -> list[float]:
        """Compute scores (no cache); override to parallelise."""
        return [score_one(self.store, self.estimator, self.params, r, self.granularity, self.rows) for r in runs]

    def score_runs(self, runs: Iterable[Run]) -> list[float]:
        runs = [_check_run(r, self.n_blocks) for r in runs]
        out: dict[str, float] = {}
        todo = []
        for r in runs:
            v = self.cache.get(run_key(r)) if self.cache else None
            if v is None:
                todo.append(r)
            else:
                out[run_key(r)] = v
        if todo:
            values = self.compute(todo)
            new = {run_key(r): v for r, v in zip(todo, values, strict=True)}
            self.computed += len(new)
            self.batches += 1
            if self.cache:
                self.cache.put_many(new)
            out.update(new)
        return [out[run_key(r)] for r in runs]

    def __call__(self, run: Run) -> float:
        return self.score_runs([run])[0]

    def block_scores(self) -> list[float]:
        return self.score_runs([(i,) for i in range(self.n_blocks)])


def boundary_names(store: ActivationStore, granularity: str) -> list[tuple[str, str]]:
    """(input boundary, output boundary) of every block at a granularity."""

    n = store.n_layers
    if granularity == "layer":
        return [(bn("h", i), bn("h", i + 1)) for i in range(n)]
    if granularity == "attention":
        return [(bn("h", i), bn("m", i)) for i in range(n)]
    if granularity == "mlp":
        return [(bn("m", i), bn("h", i + 1)) for i in range(n)]
    raise ValueError(f"unknown granularity {granularity!r}")


def entropy_cache(store: ActivationStore, estimator: str, params: dict[str, Any],
                  rows: np.ndarray | None = None) -> ScoreCache:
    """The cache of boundary entropies for (estimator, params, rows): one key for every path that fills it."""
    extra = "entropy" + ("" if rows is None else hashlib.sha256(np.asarray(rows).tobytes()).hexdigest()[:12])
    return ScoreCache(store, params_key(estimator, params, "boundary", extra),
                      {"estimator": estimator, "params": params, "kind": "entropy"})


class EntropyScorer:
    """Entropies of store boundaries with one estimator, cached on disk like run scores.

    ``compute`` is the one method a subclass overrides to compute the uncached boundaries elsewhere
    (Ray tasks); the cache key is the same, so either path reads what the other wrote."""

    def __init__(self, store: ActivationStore, estimator: str, params: dict[str, Any] | None = None,
                 rows: np.ndarray | None = None, use_cache: bool = True) -> None:
        self.store = store
        self.estimator = estimator
        self.params = dict(params or {})
        self.rows = rows = estimator_rows(store, estimator, rows)
        self.cache = entropy_cache(store, estimator, self.params, rows) if use_cache else None
        self.computed = 0
        self.batches = 0

    def compute(self, names: Sequence[str]) -> list[float]:
        return [entropy_one(self.store, self.estimator, self.params, n, self.rows) for n in names]

    def entropies(self, names: Iterable[str]) -> dict[str, float]:
        names = list(dict.fromkeys(names))
        h = {n: v for n in names if (v := self.cache.get(n) if self.cache else None) is not None}
        todo = [n for n in names if n not in h]
        if todo:
            new = dict(zip(todo, (float(v) for v in self.compute(todo)), strict=True))
            self.computed += len(new)
            self.batches += 1
            if self.cache:
                self.cache.put_many(new)
            h.update(new)
        return h

    def increase(self, granularity: str = "layer") -> tuple[list[float], dict[str, float]]:
        """(ΔH per block, H per boundary) at a granularity."""
        pairs = boundary_names(self.store, granularity)
        h = self.entropies(sorted({n for p in pairs for n in p}))
        return [h[o] - h[i] for i, o in pairs], dict(sorted(h.items()))


def entropy_increase(store: ActivationStore, estimator: str, params: dict[str, Any] | None = None,
                     granularity: str = "layer", rows: np.ndarray | None = None,
                     use_cache: bool = True) -> tuple[list[float], dict[str, float]]:
    """(ΔH per block, H per boundary): EntroDrop's score, entropies cached like run scores.

    For a ``pooling="window"`` estimator H is the mean over windows, so ΔH is the per-window ΔH averaged
    over windows, as EntroDrop's released code computes it."""
    return EntropyScorer(store, estimator, params, rows, use_cache).increase(granularity)

