"""MI-PRUN run search: Fast-Block-Select (FBS) and its brute-force reference.

A run of contiguous blocks i..j is scored by MI(h_{i−1}; h_j) (``score_run``; higher = the run
adds less = more redundant). MI of runs of different lengths cannot be added up meaningfully (one
block's MI always exceeds a longer run's by the data-processing inequality), so both searches keep
a *group structure*: the greedy pick (N highest single-block MI) fixes how many runs of each length
are dropped, and an iteration only moves runs (lengths kept) or, when two runs end up adjacent,
merges them into one longer group at the next iteration.

One iteration (paper steps 3–6), from the current pruning set P:

3. group P into maximal contiguous runs;
4. for each group length ℓ list the candidate runs of length ℓ — FBS: inside P ∪ A (A = the M
   least important blocks outside P, M = min(N, L − N)), ranked by the estimate Σ single scores;
   brute force: every run of length ℓ in the model;
5. FBS: exact-score the top K = min(⌈log₁₀ ℓ⌉ + 5, S) of each length (S = number of candidates);
   brute force: all of them (scored up front, Σ_{ℓ≤N} (L − ℓ + 1) evaluations);
6. pick one candidate per group, pairwise non-overlapping, with the best total exact score
   (an exact dynamic program over positions, :func:`best_combination`).

Candidates are pooled per length: groups of equal length are interchangeable, so any of them may
take any candidate of that length.

Feasibility: each group's *current* run is added to its length's candidates even when it is not in
the top K (it lies in P ⊆ P ∪ A, and is usually already cached). The current assignment is therefore
always a feasible combination, step 6 always has an answer, and its best total is never below the
current total.

Termination: P moves only on a *strict* improvement of the total (by more than a 1e-12 relative
slack); ties keep the current set. While no runs merge, the group lengths are fixed and the
objective is the same function, so successive totals strictly increase and no P can repeat. A merge
lowers the number of groups, which never rises (runs are never split). Hence the loop ends. Because
every exact score is cached, a noisy estimator is still seen as one fixed function, which this
argument needs. As a defence anyway, the loop stops if P repeats (``stop="cycle"``, keeping the
current P) or after ``max_iterations``.

Ties: equal totals → the combination with the lexicographically smallest block tuple (lower index
first); equal estimates → the earlier run; equal single scores → the lower block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from blockprune.selection.result import Selection
from blockprune.selection.scorer import BatchRunScorer, CachedRunScorer, RunScoreFn, is_run_scorer
from blockprune.selection.topk import check_n_blocks, check_n_prune

Run = tuple[int, ...]
Candidates = dict[int, list[Run]]
DEFAULT_MAX_ITERATIONS = 100


def top_k(length: int, n_candidates: int) -> int:
    """K = min(⌈log₁₀ ℓ⌉ + 5, S), computed on integers (⌈log₁₀ ℓ⌉ = digits of ℓ − 1 for ℓ ≥ 2)."""
    if length < 1:
        raise ValueError(f"run length must be >= 1, got {length}")
    ceil_log10 = 0 if length == 1 else len(str(length - 1))
    return min(ceil_log10 + 5, n_candidates)


def contiguous_groups(blocks: Iterable[int]) -> list[Run]:
    """Maximal runs of consecutive indices: (2, 3, 7) → [(2, 3), (7,)]."""
    out: list[list[int]] = []
    for b in sorted(set(blocks)):
        if out and b == out[-1][-1] + 1:
            out[-1].append(b)
        else:
            out.append([b])
    return [tuple(g) for g in out]


def brute_force_evaluations(n_blocks: int, n_prune: int) -> int:
    """Σ_{ℓ=1..N} (L − ℓ + 1): every contiguous run of length ≤ N (150 for L=32, N=5)."""
    return sum(n_blocks - length + 1 for length in range(1, n_prune + 1))


def fast_block_select(
    n_blocks: int,
    n_prune: int,
    score_run: RunScoreFn | BatchRunScorer,
    *,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> Selection:
    """MI-PRUN Fast-Block-Select: few exact run scores, candidates near the greedy pick."""
    scorer, singles, order = _start(n_blocks, n_prune, score_run, max_iterations, upfront=1)
    m = min(n_prune, n_blocks - n_prune)

    def candidates(p: Run, groups: list[Run]) -> tuple[Candidates, dict[str, Any]]:
        in_p = set(p)
        alt = [i for i in order if i not in in_p][:m]
        pool = in_p | set(alt)
        cands: Candidates = {}
        ks: dict[str, int] = {}
        for length in sorted({len(g) for g in groups}):
            runs = [
                tuple(range(s, s + length))
                for s in range(n_blocks - length + 1)
                if all(b in pool for b in range(s, s + length))
            ]
            runs.sort(key=lambda r: (-sum(singles[b] for b in r), r[0]))
            k = top_k(length, len(runs))
            chosen = runs[:k]
            chosen += [g for g in groups if len(g) == length and g not in chosen]  # feasibility fallback
            cands[length] = chosen
            ks[str(length)] = k
        return cands, {"alternatives": sorted(alt), "k": ks}

    return _iterate(n_blocks, n_prune, scorer, order, candidates, "mi_fbs", max_iterations)


def brute_force_select(
    n_blocks: int,
    n_prune: int,
    score_run: RunScoreFn | BatchRunScorer,
    *,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> Selection:
    """Reference for FBS: the same update, exact scores of every run of length ≤ N, anywhere."""
    scorer, _, order = _start(n_blocks, n_prune, score_run, max_iterations, upfront=n_prune)

    def candidates(p: Run, groups: list[Run]) -> tuple[Candidates, dict[str, Any]]:
        cands = {
            length: [tuple(range(s, s + length)) for s in range(n_blocks - length + 1)]
            for length in sorted({len(g) for g in groups})
        }
        return cands, {}

    return _iterate(n_blocks, n_prune, scorer, order, candidates, "mi_brute", max_iterations)


def best_combination(
    n_blocks: int,
    need: Mapping[int, int],
    candidates: Mapping[int, Iterable[Run]],
    score: Callable[[Run], float],
) -> tuple[float, tuple[Run, ...]] | None:
    """Best total score of ``need[ℓ]`` pairwise non-overlapping runs of each length ℓ.

    Runs of length ℓ must come from ``candidates[ℓ]``. Exact dynamic program over (position,
    remaining counts per length): groups of equal length are interchangeable, so the state space is
    tiny (≤ L × Π(count+1)) even where per-group enumeration (≈ L^groups) would not be.
    Returns ``None`` if no combination exists. Ties → lexicographically smallest block tuple.
    """
    lengths = sorted(ell for ell, c in need.items() if c > 0)
    starts = {ell: {r[0]: r for r in candidates.get(ell, ())} for ell in lengths}
    for ell, runs in starts.items():
        bad = [r for r in runs.values() if len(r) != ell]
        if bad:
            raise ValueError(f"candidates of length {ell} include runs of another length: {bad}")
    memo: dict[tuple[int, tuple[int, ...]], tuple[float, tuple[int, ...], tuple[Run, ...]] | None] = {}

    def solve(pos: int, counts: tuple[int, ...]) -> tuple[float, tuple[int, ...], tuple[Run, ...]] | None:
        if not any(counts):
            return (0.0, (), ())
        if pos + sum(c * ell for c, ell in zip(counts, lengths, strict=True)) > n_blocks:
            return None
        key = (pos, counts)
        if key in memo:
            return memo[key]
        best = solve(pos + 1, counts)
        for i, ell in enumerate(lengths):
            run = starts[ell].get(pos)
            if not counts[i] or run is None:
                continue
            sub = solve(pos + ell, counts[:i] + (counts[i] - 1,) + counts[i + 1 :])
            if sub is None:
                continue
            cand = (score(run) + sub[0], run + sub[1], (run,) + sub[2])
            if best is None or _better(cand[0], cand[1], best[0], best[1]):
                best = cand
        memo[key] = best
        return best

    out = solve(0, tuple(need[ell] for ell in lengths))
    return None if out is None else (out[0], out[2])


def _better(total_a: float, blocks_a: tuple[int, ...], total_b: float, blocks_b: tuple[int, ...]) -> bool:
    tol = 1e-12 * max(1.0, abs(total_a), abs(total_b))
    if total_a > total_b + tol:
        return True
    return abs(total_a - total_b) <= tol and blocks_a < blocks_b


def _start(
    n_blocks: int,
    n_prune: int,
    score_run: RunScoreFn | BatchRunScorer,
    max_iterations: int,
    *,
    upfront: int,
) -> tuple[CachedRunScorer, list[float], list[int]]:
    """Validate, score all runs up to length ``upfront`` in one batch, rank the single blocks."""
    check_n_blocks(n_blocks)
    check_n_prune(n_prune, n_blocks - 1, "blocks (at least one must stay)")
    if not is_run_scorer(score_run):
        raise ValueError("score_run must be callable or have score_runs()")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    scorer = CachedRunScorer(score_run, n_blocks)
    scorer.prefetch(
        tuple(range(s, s + length)) for length in range(1, upfront + 1) for s in range(n_blocks - length + 1)
    )
    singles = [scorer((i,)) for i in range(n_blocks)]
    order = sorted(range(n_blocks), key=lambda i: (-singles[i], i))  # least important first
    return scorer, singles, order


def _iterate(
    n_blocks: int,
    n_prune: int,
    scorer: CachedRunScorer,
    order: list[int],
    candidates: Callable[[Run, list[Run]], tuple[Candidates, dict[str, Any]]],
    method: str,
    max_iterations: int,
) -> Selection:
    p: Run = tuple(sorted(order[:n_prune]))
    history: list[Run] = [p]
    trace: list[dict[str, Any]] = []
    stop = "max_iterations"
    for _ in range(max_iterations):
        groups = contiguous_groups(p)
        cands, extra = candidates(p, groups)
        before = scorer.evaluations
        scorer.prefetch(r for runs in cands.values() for r in runs)
        need: dict[int, int] = {}
        for g in groups:
            need[len(g)] = need.get(len(g), 0) + 1
        current = sum(scorer(g) for g in groups)
        found = best_combination(n_blocks, need, cands, scorer)
        if found is None:  # cannot happen: the current runs are candidates of their lengths
            raise RuntimeError(f"no feasible combination for groups {groups}")
        best_total, best_runs = found
        improved = _better(best_total, (), current, ())  # strictly better, beyond float slack
        new_p: Run = tuple(sorted(b for r in best_runs for b in r)) if improved else p
        trace.append(
            {
                "blocks": list(p),
                "groups": [[g[0], g[-1]] for g in groups],
                "candidates": {str(ell): [[r[0], r[-1]] for r in runs] for ell, runs in cands.items()},
                "current_total": current,
                "best_total": best_total,
                "chosen": [[r[0], r[-1]] for r in best_runs] if improved else [[g[0], g[-1]] for g in groups],
                "new_evaluations": scorer.evaluations - before,
                **extra,
            }
        )
        if new_p == p:
            stop = "converged"
            break
        if new_p in history:
            stop = "cycle"
            break
        p = new_p
        history.append(p)
    info: dict[str, Any] = {
        "method": method,
        "iterations": len(trace),
        "stop": stop,
        "greedy": list(history[0]),
        "score_calls": scorer.calls,
        "trace": trace,
    }
    return Selection(
        blocks=p, evaluations=scorer.evaluations, history=tuple(history), info=info, run_scores=scorer.cache
    )
