"""Scoring fan-out: one Ray task per (estimator, run), boundaries in the object store once.

Transport: each boundary array of a store (``h_l``, ``m_l``) is put into the object store the
first time a scorer needs it, once per store and job. A task receives the two boundaries of its
run as top-level arguments, so Ray hands it read-only numpy views of shared memory on its node
(zero-copy); tasks on another node pull one copy per node. With a colocated placement group the
arrays are loaded by a task inside the group, so they start on the model's node.

Scores: the task wraps the arrays in a :class:`BoundaryView` (an ActivationStore backed by those
arrays) and calls the same :func:`~blockprune.calibration.scoring.score_one` as the single-process
path, so both give identical numbers. :class:`RayRunScorer` subclasses ``StoreRunScorer`` and
overrides only ``compute``: the on-disk cache keyed by (store checksum, estimator, params, run)
is the same file either path reads and writes, so a rerun recomputes nothing.

Selection stays central: Fast-Block-Select and brute force call ``score_runs`` once per iteration
with all their new candidates; that is one fan-out and one round trip here. EntroDrop's boundary
entropies go out the same way (:class:`RayEntropyScorer`), into the cache the local path reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from blockprune.calibration.scoring import (
    EntropyScorer,
    Run,
    StoreRunScorer,
    boundary_names,
    entropy_one,
    score_one,
)
from blockprune.calibration.store import ActivationStore
from blockprune.pipeline.config import ScoringOptions

log = logging.getLogger(__name__)


class BoundaryView(ActivationStore):
    """An ActivationStore over in-memory arrays (object-store views), for ``score_one`` in tasks."""

    def __init__(self, arrays: dict[str, np.ndarray], n_layers: int, has_mid: bool,
                 positions: np.ndarray | None = None) -> None:
        super().__init__(Path("<object-store>"), {"n_layers": n_layers, "capture_mid": has_mid})
        self._arrays = arrays
        self._positions = positions

    def positions(self) -> np.ndarray:
        """(window, position) of each row: shipped only to tasks of per-window estimators."""
        if self._positions is None:
            raise KeyError("the store's positions were not shipped to this task")
        return self._positions

    def array(self, name: str) -> np.ndarray:
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(f"boundary {name!r} was not shipped to this task") from None


def _score_task(estimator: str, params: dict[str, Any], run: Run, granularity: str, rows: np.ndarray | None,
                n_layers: int, has_mid: bool, names: tuple[str, ...], *arrays: np.ndarray) -> float:
    view = BoundaryView(dict(zip(names, arrays, strict=True)), n_layers, has_mid)
    return score_one(view, estimator, params, run, granularity, rows)


def run_boundaries(store: ActivationStore, run: Run, granularity: str) -> tuple[str, ...]:
    """Boundaries ``run_arrays`` reads for a run: (in, out) of its first and of its last block."""
    pairs = boundary_names(store, granularity)
    return tuple(dict.fromkeys(pairs[run[0]] + pairs[run[-1]]))


def _entropy_task(estimator: str, params: dict[str, Any], name: str, rows: np.ndarray | None, n_layers: int,
                  has_mid: bool, x: np.ndarray, positions: np.ndarray | None = None) -> float:
    """One boundary entropy; ``positions`` (the store's (window, position) rows) for per-window estimators."""
    return entropy_one(BoundaryView({name: x}, n_layers, has_mid, positions), estimator, params, name, rows)


def _load_boundaries(path: str, names: list[str]) -> Any:
    arrays = [np.load(Path(path) / f"{n}.npy") for n in names]
    return arrays[0] if len(arrays) == 1 else tuple(arrays)


def _describe_array(x: np.ndarray) -> dict[str, Any]:
    """What a task sees: a read-only view of shared memory when the transport is zero-copy."""
    import os

    return {"writeable": bool(x.flags.writeable), "owndata": bool(x.flags.owndata), "pid": os.getpid(),
            "shape": list(x.shape), "dtype": str(x.dtype)}


class BoundaryRefs:
    """Object refs of a store's boundary arrays, each put into the object store once."""

    def __init__(self, store: ActivationStore, strategy: Any | None = None) -> None:
        self.store = store
        self.strategy = strategy
        self._refs: dict[str, Any] = {}
        self.bytes_put = 0

    def refs(self, names: Iterable[str]) -> dict[str, Any]:
        """Refs for ``names``, putting the missing ones now (one loader task when placed)."""
        import ray

        names = list(dict.fromkeys(names))
        missing = [n for n in names if n not in self._refs]
        if missing:
            if self.strategy is None:
                for n in missing:
                    arr = np.load(self.store.path / f"{n}.npy")
                    self._refs[n] = ray.put(arr)
                    self.bytes_put += arr.nbytes
            else:
                loader = ray.remote(_load_boundaries).options(num_cpus=0, num_returns=len(missing),
                                                              scheduling_strategy=self.strategy)
                out = loader.remote(str(self.store.path), missing)
                out = [out] if len(missing) == 1 else out
                for n, ref in zip(missing, out, strict=True):
                    self._refs[n] = ref
                    self.bytes_put += self.store.array(n).nbytes
        return {n: self._refs[n] for n in names}

    def __len__(self) -> int:
        return len(self._refs)


def default_max_in_flight(num_cpus: float) -> int:
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, int(2 * cpus / num_cpus))


def fan_out(submit: Callable[[Any], Any], items: Sequence[Any], max_in_flight: int,
            label: Callable[[Any], str] = str) -> list[Any]:
    """Results of ``submit(item)`` for every item, in order, with at most ``max_in_flight`` pending.

    A failed task cancels the pending ones and re-raises its error, noting which item failed.
    """
    import ray

    results: list[Any] = [None] * len(items)
    pending: dict[Any, int] = {}
    nxt = 0
    try:
        while nxt < len(items) or pending:
            while nxt < len(items) and len(pending) < max_in_flight:
                pending[submit(items[nxt])] = nxt
                nxt += 1
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except Exception as e:
                    e.add_note(f"blockprune: while scoring {label(items[i])}")
                    raise
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=False)
        raise
    return results


class RayRunScorer(StoreRunScorer):
    """``StoreRunScorer`` whose uncached runs are computed by Ray tasks, in one round trip per batch."""

    def __init__(self, store: ActivationStore, estimator: str, params: dict[str, Any] | None = None,
                 granularity: str = "layer", rows: np.ndarray | None = None, use_cache: bool = True, *,
                 boundaries: BoundaryRefs | None = None, options: ScoringOptions | None = None,
                 strategy: Any | None = None) -> None:
        import ray

        super().__init__(store, estimator, params, granularity, rows, use_cache)
        self.options = options or ScoringOptions()
        self.boundaries = boundaries or BoundaryRefs(store, strategy)
        self.max_in_flight = self.options.max_in_flight or default_max_in_flight(self.options.num_cpus)
        self._remote = ray.remote(_score_task).options(
            num_cpus=self.options.num_cpus, max_retries=self.options.max_retries,
            retry_exceptions=self.options.retry_exceptions, scheduling_strategy=strategy)
        self.tasks = 0
        self.seconds = 0.0

    def compute(self, runs: Sequence[Run]) -> list[float]:
        t0 = time.perf_counter()
        by_run = {r: run_boundaries(self.store, r, self.granularity) for r in runs}
        refs = self.boundaries.refs(n for names in by_run.values() for n in names)
        n_layers, has_mid = self.store.n_layers, self.store.has_mid
        rows = self.rows

        def submit(run: Run) -> Any:
            names = by_run[run]
            return self._remote.remote(self.estimator, self.params, run, self.granularity, rows, n_layers, has_mid,
                                       names, *(refs[n] for n in names))

        out = fan_out(submit, list(runs), self.max_in_flight,
                      label=lambda r: f"run {r[0]}..{r[-1]} with {self.estimator} {self.params}")
        self.tasks += len(runs)
        self.seconds += time.perf_counter() - t0
        return [float(v) for v in out]

    @property
    def round_trips(self) -> int:
        """One fan-out per uncached batch: ``StoreRunScorer.batches`` under its Ray name."""
        return self.batches


class RayEntropyScorer(EntropyScorer):
    """``EntropyScorer`` whose uncached boundaries are computed by Ray tasks (same cache file)."""

    def __init__(self, store: ActivationStore, estimator: str, params: dict[str, Any] | None,
                 boundaries: BoundaryRefs, options: ScoringOptions, strategy: Any | None = None) -> None:
        super().__init__(store, estimator, params)
        self.boundaries = boundaries
        self.options = options
        self.strategy = strategy

    def compute(self, names: Sequence[str]) -> list[float]:
        import ray

        refs = self.boundaries.refs(names)
        remote = ray.remote(_entropy_task).options(
            num_cpus=self.options.num_cpus, max_retries=self.options.max_retries,
            retry_exceptions=self.options.retry_exceptions, scheduling_strategy=self.strategy)
        max_in_flight = self.options.max_in_flight or default_max_in_flight(self.options.num_cpus)
        store, est, params, rows = self.store, self.estimator, self.params, self.rows
        from blockprune import estimators

        # per-window estimators group rows by window: only their tasks need the store's (window, position) rows
        positions = ray.put(store.positions()) if estimators.get(est).pooling == "window" else None
        values = fan_out(lambda n: remote.remote(est, params, n, rows, store.n_layers, store.has_mid, refs[n],
                                                 positions),
                         list(names), max_in_flight, label=lambda n: f"entropy of {n} with {est} {params}")
        return [float(v) for v in values]


@dataclass
class RayScoring:
    """The scoring side of one job: boundary refs per store, task options, counters.

    It is the Ray backend's :class:`~blockprune.pipeline.scoring.Scorers`:
    ``score_and_select(store, trial, scoring)`` fans every exact score out unchanged.
    """

    options: ScoringOptions = field(default_factory=ScoringOptions)
    strategy: Any | None = None
    scorers: list[RayRunScorer] = field(default_factory=list)
    entropy_scorers: list[RayEntropyScorer] = field(default_factory=list)
    _boundaries: dict[str, BoundaryRefs] = field(default_factory=dict)

    def boundaries(self, store: ActivationStore) -> BoundaryRefs:
        key = f"{store.path}:{store.checksum}"
        if key not in self._boundaries:
            self._boundaries[key] = BoundaryRefs(store, self.strategy)
        return self._boundaries[key]

    def run_scorer(self, store: ActivationStore, estimator: str, params: dict[str, Any],
                   granularity: str) -> RayRunScorer:
        scorer = RayRunScorer(store, estimator, params, granularity, boundaries=self.boundaries(store),
                              options=self.options, strategy=self.strategy)
        self.scorers.append(scorer)
        return scorer

    def entropy_increase(self, store: ActivationStore, estimator: str, params: dict[str, Any] | None = None,
                         granularity: str = "layer") -> tuple[list[float], dict[str, float]]:
        """EntroDrop's ΔH with every uncached boundary entropy computed by a Ray task."""
        scorer = RayEntropyScorer(store, estimator, params, self.boundaries(store), self.options, self.strategy)
        self.entropy_scorers.append(scorer)
        return scorer.increase(granularity)

    def counters(self) -> tuple[int, int]:
        """(exact scores computed by tasks, fan-outs): the job's ``scores_computed`` / ``scoring_batches``."""
        return self.tasks, self.round_trips

    @property
    def tasks(self) -> int:
        return sum(s.computed for s in self.entropy_scorers) + sum(s.tasks for s in self.scorers)

    @property
    def round_trips(self) -> int:
        return sum(s.batches for s in self.entropy_scorers) + sum(s.round_trips for s in self.scorers)


def inspect_transport(refs: BoundaryRefs, name: str, strategy: Any | None = None) -> dict[str, Any]:
    """How a task sees one boundary (zero-copy check used by tests and ``--explain``)."""
    import ray

    ref = refs.refs([name])[name]
    return ray.get(ray.remote(_describe_array).options(num_cpus=0.01, scheduling_strategy=strategy).remote(ref))
