"""Top-k selections, positional baselines, the angular run baseline and n_prune from a ratio."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blockprune.selection import (
    CachedRunScorer,
    angular_contiguous,
    check_run,
    mi_greedy,
    n_prune_from_ratio,
    reverse_order,
    select_highest,
    select_lowest,
    sequential,
)
from blockprune.selection.synthetic import BatchTableScorer, TableScorer

pytestmark = pytest.mark.unit


def test_lowest_and_highest_with_ties_to_lower_index() -> None:
    scores = [0.5, 0.1, 0.3, 0.1, 0.9, 0.9]
    assert select_lowest(scores, 2).blocks == (1, 3)
    assert select_lowest(scores, 3).blocks == (1, 2, 3)
    assert select_highest(scores, 1).blocks == (4,)
    assert select_highest(scores, 3).blocks == (0, 4, 5)
    assert select_lowest([0.2] * 6, 3).blocks == (0, 1, 2)
    assert select_highest([0.2] * 6, 3).blocks == (0, 1, 2)
    assert mi_greedy(scores, 2).blocks == (4, 5)


def test_protect() -> None:
    scores = [0.0, 0.1, 0.2, 0.3, 0.4]
    sel = select_lowest(scores, 2, protect=[0, 4])
    assert sel.blocks == (1, 2)
    assert sel.info["protected"] == [0, 4]
    with pytest.raises(ValueError, match="only 3 droppable"):
        select_lowest(scores, 4, protect=[0, 4])
    with pytest.raises(ValueError, match="out of range"):
        select_lowest(scores, 1, protect=[5])


def test_numpy_inputs() -> None:
    assert select_lowest(np.array([3.0, 1.0, 2.0]), np.int64(1)).blocks == (1,)


@pytest.mark.parametrize("bad", [[0.1, math.nan, 0.2], [0.1, math.inf, 0.2]])
def test_non_finite_scores(bad: list[float]) -> None:
    with pytest.raises(ValueError, match=r"blocks \[1\]"):
        select_lowest(bad, 1)


def test_positional_baselines() -> None:
    assert sequential(32, 4).blocks == (1, 2, 3, 4)
    assert reverse_order(32, 4).blocks == (27, 28, 29, 30)
    assert reverse_order(6, 5).blocks == (0, 1, 2, 3, 4)
    assert sequential(6, 5).blocks == (1, 2, 3, 4, 5)
    with pytest.raises(ValueError):
        sequential(6, 6)
    with pytest.raises(ValueError):
        reverse_order(6, 0)


def test_angular_picks_the_lowest_run_in_one_batch() -> None:
    n, k = 12, 3
    table = {tuple(range(s, s + k)): 1.0 - 0.01 * s for s in range(n - k + 1)}
    table[(2, 3, 4)] = 0.2
    table[(6, 7, 8)] = 0.2  # tie: the earlier run wins
    scorer = BatchTableScorer(table)
    sel = angular_contiguous(n, k, scorer)
    assert sel.blocks == (2, 3, 4)
    assert sel.evaluations == n - k + 1
    assert len(scorer.batches) == 1
    assert sel.info["run"] == [2, 4]
    assert angular_contiguous(n, k, TableScorer(table)).blocks == (2, 3, 4)


@pytest.mark.parametrize(
    ("ratio", "n", "k"),
    [(0.25, 32, 8), (0.1, 30, 3), (0.1, 32, 4), (0.3, 10, 3), (0.01, 32, 1), (0.5, 3, 2), (0.2, 40, 8)],
)
def test_n_prune_from_ratio_rounds_up(ratio: float, n: int, k: int) -> None:
    assert n_prune_from_ratio(ratio, n) == k


@pytest.mark.parametrize(
    ("ratio", "n"), [(0.0, 32), (1.0, 32), (-0.1, 32), (0.99, 32), (0.5, 1), ("0.2", 32)]
)
def test_n_prune_from_ratio_rejects(ratio: float, n: int) -> None:
    with pytest.raises(ValueError):
        n_prune_from_ratio(ratio, n)


def test_cached_run_scorer() -> None:
    scorer = TableScorer({(0,): 1.0, (1,): 2.0, (0, 1): 0.5})
    cached = CachedRunScorer(scorer, n_blocks=2)
    assert cached((0, 1)) == 0.5 and cached([0, 1]) == 0.5
    assert cached.prefetch([(0,), (1,), (0,)]) == 2
    assert cached.evaluations == 3 and len(scorer.asked) == 3
    assert cached.score_runs([(1,), (0,)]) == [2.0, 1.0]
    assert dict(cached.cache) == {(0, 1): 0.5, (0,): 1.0, (1,): 2.0}
    with pytest.raises(ValueError, match="consecutive"):
        cached((0, 2))
    with pytest.raises(ValueError, match="out of range"):
        cached((1, 2))
    with pytest.raises(ValueError, match="score_runs"):
        CachedRunScorer(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        check_run(())


def test_batch_scorer_must_answer_every_run() -> None:
    class Short:
        def score_runs(self, runs: list[tuple[int, ...]]) -> list[float]:
            return [0.0] * (len(runs) - 1)

    with pytest.raises(ValueError, match="returned 1 scores for 2 runs"):
        CachedRunScorer(Short()).prefetch([(0,), (1,)])
