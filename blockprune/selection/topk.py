"""One-shot selections: top-k on per-block scores, fixed-position baselines, best contiguous run.

Ties are broken towards the lower block index everywhere, so a plan does not depend on sort
stability or dict order.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

from blockprune.errors import BadInputError
from blockprune.selection.result import Selection
from blockprune.selection.scorer import BatchRunScorer, CachedRunScorer, RunScoreFn


def n_prune_from_ratio(ratio: float, n_blocks: int) -> int:
    """Blocks to drop for a pruning ratio: ⌈ratio × L⌉, so a ratio never prunes less than asked.

    A 1e-9 relative slack keeps float noise (0.1 × 30 = 3.0000000000000004) from adding a block.
    """
    check_n_blocks(n_blocks)
    if not (isinstance(ratio, int | float) and 0.0 < float(ratio) < 1.0):
        raise BadInputError(f"pruning ratio must be in (0, 1), got {ratio!r}")
    x = float(ratio) * n_blocks
    k = max(1, math.ceil(x - 1e-9 * max(1.0, x)))
    if k >= n_blocks:
        raise BadInputError(
            f"ratio {ratio} of {n_blocks} blocks gives {k} blocks to drop; at least one must stay"
        )
    return k


def select_lowest(scores: Sequence[float], n_prune: int, protect: Iterable[int] = ()) -> Selection:
    """The ``n_prune`` unprotected blocks with the lowest score (ShortGPT BI, relative magnitude)."""
    return _top(scores, n_prune, protect, highest=False)


def select_highest(scores: Sequence[float], n_prune: int, protect: Iterable[int] = ()) -> Selection:
    """The ``n_prune`` unprotected blocks with the highest score (single-block MI)."""
    return _top(scores, n_prune, protect, highest=True)


def mi_greedy(scores: Sequence[float], n_prune: int) -> Selection:
    """MI-PRUN greedy: drop the blocks whose input and output share the most information."""
    return select_highest(scores, n_prune)


def sequential(n_blocks: int, n_prune: int) -> Selection:
    """Baseline: the first ``n_prune`` blocks after the first one, i.e. blocks 1..k."""
    check_n_blocks(n_blocks)
    check_n_prune(n_prune, n_blocks - 1, "blocks after the first")
    return Selection(blocks=tuple(range(1, n_prune + 1)), info={"method": "sequential"})


def reverse_order(n_blocks: int, n_prune: int) -> Selection:
    """Baseline: the last ``n_prune`` blocks before the last one, i.e. L-1-k..L-2."""
    check_n_blocks(n_blocks)
    check_n_prune(n_prune, n_blocks - 1, "blocks before the last")
    return Selection(blocks=tuple(range(n_blocks - 1 - n_prune, n_blocks - 1)), info={"method": "reverse"})


def angular_contiguous(n_blocks: int, n_prune: int, score_run: RunScoreFn | BatchRunScorer) -> Selection:
    """Gromov et al.: the contiguous run of length k whose input/output angular distance is lowest.

    All L-k+1 runs are scored in one batch; ties go to the earlier run.
    """
    check_n_blocks(n_blocks)
    check_n_prune(n_prune, n_blocks - 1, "blocks (one must stay)")
    scorer = CachedRunScorer(score_run, n_blocks)
    runs = [tuple(range(s, s + n_prune)) for s in range(n_blocks - n_prune + 1)]
    scorer.prefetch(runs)
    best = min(runs, key=lambda r: (scorer(r), r[0]))
    return Selection(
        blocks=best,
        evaluations=scorer.evaluations,
        info={"method": "angular", "run": [best[0], best[-1]], "score": scorer(best)},
        run_scores=scorer.cache,
    )


def _top(scores: Sequence[float], n_prune: int, protect: Iterable[int], *, highest: bool) -> Selection:
    values = check_block_scores(scores)
    n = len(values)
    protected = set()
    for p in protect:
        if not 0 <= int(p) < n:
            raise BadInputError(f"protected block {p} out of range for {n} blocks")
        protected.add(int(p))
    candidates = [i for i in range(n) if i not in protected]
    check_n_prune(n_prune, len(candidates), "droppable blocks" if protected else "blocks")
    sign = -1.0 if highest else 1.0
    chosen = sorted(candidates, key=lambda i: (sign * values[i], i))[:n_prune]
    return Selection(
        blocks=tuple(chosen),
        info={"order": "highest" if highest else "lowest", "protected": sorted(protected)},
    )


def check_block_scores(scores: Sequence[float], n_blocks: int | None = None) -> list[float]:
    """Per-block scores as floats; wrong length or a NaN/inf raises, naming the block."""
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError) as e:
        raise BadInputError(f"block scores must be a sequence of numbers: {e}") from None
    if not values:
        raise BadInputError("no block scores given")
    if n_blocks is not None and len(values) != n_blocks:
        raise BadInputError(f"expected {n_blocks} block scores (one per block), got {len(values)}")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise BadInputError(f"block scores must be finite; blocks {bad} have {[values[i] for i in bad]}")
    return values


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


class TooFewBlocksError(BadInputError):
    """The method leaves fewer droppable blocks than asked for (e.g. EntroDrop's S_start lies late): a
    property of the scores, so a sweep records it instead of failing."""


def check_n_blocks(n_blocks: int) -> None:
    if not _is_int(n_blocks) or n_blocks < 2:
        raise BadInputError(f"n_blocks must be an int >= 2, got {n_blocks!r}")


def check_n_prune(n_prune: int, available: int, what: str) -> None:
    if not _is_int(n_prune) or n_prune < 1:
        raise BadInputError(f"n_prune must be an int >= 1, got {n_prune!r}")
    if n_prune > available:
        raise TooFewBlocksError(f"cannot drop {n_prune} blocks: only {available} {what}")
