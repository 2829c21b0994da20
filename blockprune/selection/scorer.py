"""Run scorers as selection sees them, and the cache that makes every exact score count once.

Selection never knows where a score comes from (a driver cache, Ray tasks, a test table). It only
sees ``score_run(run) -> float`` over a tuple of consecutive 0-based block indices, or, for a
distributed driver that wants one round trip per step, an object with
``score_runs(list[run]) -> list[float]``.

Exact scores are expensive (a KSG estimate over thousands of tokens) and may be noisy, so
:class:`CachedRunScorer` asks for each distinct run once: the algorithms then see one consistent
value per run, which is also what makes Fast-Block-Select's iteration provably terminate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

Run = tuple[int, ...]
RunScoreFn = Callable[[Run], float]


@runtime_checkable
class BatchRunScorer(Protocol):
    """Optional batch protocol: score many runs in one call (one round trip to the workers)."""

    def score_runs(self, runs: list[Run]) -> list[float]: ...


def is_run_scorer(obj: Any) -> bool:
    """A plain callable or an object with ``score_runs``."""
    return callable(obj) or callable(getattr(obj, "score_runs", None))


def check_run(run: Sequence[int], n_blocks: int | None = None) -> Run:
    """Normalise ``run`` to a tuple and check it is non-empty, consecutive and in range."""
    t = tuple(int(b) for b in run)
    if not t:
        raise ValueError("a run needs at least one block")
    if any(b - a != 1 for a, b in zip(t, t[1:], strict=False)):
        raise ValueError(f"run {t} is not a sequence of consecutive ascending blocks")
    if t[0] < 0 or (n_blocks is not None and t[-1] >= n_blocks):
        raise ValueError(f"run {t} is out of range for {n_blocks} blocks")
    return t


class CachedRunScorer:
    """Wraps a run scorer: each distinct run is scored once; ``evaluations`` counts them.

    ``prefetch(runs)`` scores every not-yet-cached run of a step together: one ``score_runs`` call
    when the wrapped object offers it, else one plain call per run. Scores must be finite; a NaN or
    inf raises ``ValueError`` naming the run, so a broken estimate never silently steers a choice.
    Wrapping another ``CachedRunScorer`` is fine: the inner cache serves repeats, the outer one
    counts what *this* algorithm asked for.
    """

    def __init__(self, score_run: RunScoreFn | BatchRunScorer, n_blocks: int | None = None) -> None:
        if not is_run_scorer(score_run):
            raise ValueError(
                f"a run scorer must be callable or have score_runs(), got {type(score_run).__name__}"
            )
        self._scorer = score_run
        self._batch = getattr(score_run, "score_runs", None)
        if not callable(self._batch):
            self._batch = None
        self.n_blocks = n_blocks
        self._cache: dict[Run, float] = {}
        self.calls = 0  # round trips to the wrapped scorer (batch calls count once)

    @property
    def evaluations(self) -> int:
        """Distinct runs scored so far (singles included)."""
        return len(self._cache)

    @property
    def cache(self) -> Mapping[Run, float]:
        """Read-only view of every exact score obtained, in the order they were obtained."""
        return MappingProxyType(self._cache)

    def __contains__(self, run: object) -> bool:
        return run in self._cache

    def __call__(self, run: Sequence[int]) -> float:
        t = check_run(run, self.n_blocks)
        if t not in self._cache:
            self.prefetch([t])
        return self._cache[t]

    def score_runs(self, runs: list[Run]) -> list[float]:
        """Batch protocol, so a cached scorer can itself be handed to another algorithm."""
        self.prefetch(runs)
        return [self._cache[check_run(r, self.n_blocks)] for r in runs]

    def prefetch(self, runs: Iterable[Sequence[int]]) -> int:
        """Score all uncached runs among ``runs`` in one round trip; returns how many were new."""
        todo: list[Run] = []
        seen: set[Run] = set()
        for r in runs:
            t = check_run(r, self.n_blocks)
            if t not in self._cache and t not in seen:
                seen.add(t)
                todo.append(t)
        if not todo:
            return 0
        if self._batch is not None:
            values = list(self._batch(list(todo)))
            self.calls += 1
            if len(values) != len(todo):
                raise ValueError(f"score_runs returned {len(values)} scores for {len(todo)} runs")
        else:
            values = []
            for t in todo:
                values.append(self._scorer(t))  # type: ignore[operator]
                self.calls += 1
        for t, v in zip(todo, values, strict=True):
            self._cache[t] = _finite(v, t)
        return len(todo)


def _finite(value: Any, run: Run) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"score of run {run} is not a number: {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"score of run {run} (blocks {run[0]}..{run[-1]}) is {v}; scores must be finite")
    return v
