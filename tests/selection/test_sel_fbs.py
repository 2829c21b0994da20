"""Fast-Block-Select and brute force on score tables whose answer is known by construction.

``_reference_step`` is an independent, deliberately naive re-derivation of one FBS / brute-force
iteration from the spec (explicit candidate lists per group, exhaustive product over groups), used
to check that every iteration of the library picks the best non-overlapping combination.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest

from blockprune.selection import (
    CachedRunScorer,
    best_combination,
    brute_force_evaluations,
    brute_force_select,
    contiguous_groups,
    fast_block_select,
    mi_greedy,
    top_k,
)
from blockprune.selection.synthetic import BatchTableScorer, TableScorer, dpi_run_table, run_total

pytestmark = pytest.mark.unit

Run = tuple[int, ...]


def _table(n_blocks: int, singles: dict[int, float], runs: dict[Run, float], low: float = 0.1) -> dict:
    """Singles default to ``low``; longer runs default to ``low / length`` (DPI-ish)."""
    table: dict[Run, float] = {}
    for length in range(1, n_blocks + 1):
        for s in range(n_blocks - length + 1):
            r = tuple(range(s, s + length))
            table[r] = low / length
    for b, v in singles.items():
        table[(b,)] = v
    table.update(runs)
    return table


# ---------------------------------------------------------------- independent reference


def _groups(p: Run) -> list[Run]:
    out: list[Run] = []
    for b in sorted(p):
        if out and b == out[-1][-1] + 1:
            out[-1] = out[-1] + (b,)
        else:
            out.append((b,))
    return out


def _reference_candidates(n: int, k_prune: int, table: dict, p: Run, brute: bool) -> list[list[Run]]:
    """Per group (in group order): its candidate runs, straight from the spec."""
    singles = [table[(i,)] for i in range(n)]
    order = sorted(range(n), key=lambda i: (-singles[i], i))
    groups = _groups(p)
    if brute:
        return [[tuple(range(s, s + len(g))) for s in range(n - len(g) + 1)] for g in groups]
    m = min(k_prune, n - k_prune)
    alt = [i for i in order if i not in p][:m]
    pool = set(p) | set(alt)
    per_length: dict[int, list[Run]] = {}
    for g in groups:
        ell = len(g)
        if ell not in per_length:
            runs = [tuple(range(s, s + ell)) for s in range(n - ell + 1)]
            runs = [r for r in runs if set(r) <= pool]
            runs.sort(key=lambda r: (-sum(singles[b] for b in r), r[0]))
            k = min(math.ceil(math.log10(ell)) + 5, len(runs))
            per_length[ell] = runs[:k]
    for g in groups:  # the current runs stay available: the fallback that guarantees feasibility
        if g not in per_length[len(g)]:
            per_length[len(g)].append(g)
    return [per_length[len(g)] for g in groups]


def _reference_step(n: int, k_prune: int, table: dict, p: Run, brute: bool) -> tuple[float, float, set[Run]]:
    """(current total, best total, all block sets achieving the best) by exhaustive product."""
    groups = _groups(p)
    cands = _reference_candidates(n, k_prune, table, p, brute)
    best, winners = -math.inf, set()
    for combo in itertools.product(*cands):
        blocks = [b for r in combo for b in r]
        if len(set(blocks)) != len(blocks):
            continue
        total = sum(table[r] for r in combo)
        if total > best + 1e-12:
            best, winners = total, {tuple(sorted(blocks))}
        elif abs(total - best) <= 1e-12:
            winners.add(tuple(sorted(blocks)))
    return sum(table[g] for g in groups), best, winners


def _reference_select(n: int, k_prune: int, table: dict, brute: bool) -> tuple[Run, list[Run]]:
    singles = [table[(i,)] for i in range(n)]
    p = tuple(sorted(sorted(range(n), key=lambda i: (-singles[i], i))[:k_prune]))
    history = [p]
    for _ in range(100):
        current, best, winners = _reference_step(n, k_prune, table, p, brute)
        new = min(winners) if best > current + 1e-12 else p
        if new == p or new in history:
            break
        p = new
        history.append(p)
    return p, history


# ---------------------------------------------------------------- known answers


def test_greedy_wrong_and_iteration_fixes_it() -> None:
    # Greedy takes (3, 4): the two highest single MIs. Removed together they lose much more
    # (run MI 0.2) than (7, 8) does (0.8), which is the true best pair by construction.
    table = _table(10, {3: 0.95, 4: 0.94, 7: 0.93, 8: 0.92}, {(3, 4): 0.2, (7, 8): 0.8})
    assert mi_greedy([table[(i,)] for i in range(10)], 2).blocks == (3, 4)
    sel = fast_block_select(10, 2, TableScorer(table))
    assert sel.blocks == (7, 8)
    assert sel.history == ((3, 4), (7, 8))
    assert sel.info["stop"] == "converged"
    assert sel.info["greedy"] == [3, 4]
    assert brute_force_select(10, 2, TableScorer(table)).blocks == (7, 8)


def test_two_groups_merge_when_they_become_adjacent() -> None:
    # Greedy: groups (2, 3) and (6,). Iteration 1 moves (2, 3) to (4, 5), now next to (6,);
    # iteration 2 treats (4, 5, 6) as one group of length 3 and keeps it.
    singles = {6: 0.96, 2: 0.95, 3: 0.94, 4: 0.92, 5: 0.91, 9: 0.90}
    runs = {(2, 3): 0.3, (3, 4): 0.3, (4, 5): 0.85, (5, 6): 0.4, (4, 5, 6): 0.7, (3, 4, 5): 0.6}
    table = _table(12, singles, runs)
    sel = fast_block_select(12, 3, TableScorer(table))
    assert sel.history == ((2, 3, 6), (4, 5, 6))
    assert sel.blocks == (4, 5, 6)
    trace = sel.info["trace"]
    assert trace[0]["groups"] == [[2, 3], [6, 6]]
    assert trace[0]["chosen"] == [[4, 5], [6, 6]]
    assert trace[1]["groups"] == [[4, 6]]  # merged
    assert list(trace[1]["candidates"]) == ["3"]
    assert sel.info["stop"] == "converged"
    assert brute_force_select(12, 3, TableScorer(table)).blocks == (4, 5, 6)


def test_ties_go_to_the_lower_index() -> None:
    flat = dict.fromkeys(_table(12, {}, {}), 0.5)
    for fn in (fast_block_select, brute_force_select):
        sel = fn(12, 3, TableScorer(flat))
        assert sel.blocks == (0, 1, 2)
        assert sel.info["stop"] == "converged"
    # A tie between two strictly better moves: (2,3,4) and (3,4,5) both beat the current (5,6,7).
    singles = {5: 0.99, 6: 0.98, 7: 0.97, 2: 0.9, 3: 0.9, 4: 0.9}
    table = _table(12, singles, {(5, 6, 7): 0.3, (2, 3, 4): 0.8, (3, 4, 5): 0.8, (4, 5, 6): 0.1})
    sel = fast_block_select(12, 3, TableScorer(table))
    assert sel.history[0] == (5, 6, 7)
    assert sel.blocks == (2, 3, 4)


def test_equal_totals_keep_the_current_set() -> None:
    # The alternative is exactly as good as the current run: no move (strict improvement only).
    table = _table(10, {3: 0.95, 4: 0.94, 7: 0.93, 8: 0.92}, {(3, 4): 0.5, (7, 8): 0.5})
    sel = fast_block_select(10, 2, TableScorer(table))
    assert sel.blocks == (3, 4) and sel.history == ((3, 4),)


# ---------------------------------------------------------------- against the exhaustive checker


def _random_tables() -> list[tuple[int, int, dict]]:
    cases = []
    rng = random.Random(1234)
    for i in range(24):
        n = rng.randint(6, 11)
        k = rng.randint(2, min(4, n - 2))
        if i % 2:
            table = dpi_run_table(n, seed=i, synergy=0.9, noise=0.05)
        else:  # arbitrary, not DPI-consistent: the search must still be exact per iteration
            table = {
                tuple(range(s, s + ell)): rng.random() for ell in range(1, n + 1) for s in range(n - ell + 1)
            }
        cases.append((n, k, table))
    return cases


@pytest.mark.parametrize("brute", [False, True], ids=["fbs", "brute"])
def test_every_iteration_is_the_best_combination(brute: bool) -> None:
    moved = 0
    for n, k, table in _random_tables():
        fn = brute_force_select if brute else fast_block_select
        sel = fn(n, k, TableScorer(table))
        for step, p in zip(sel.info["trace"], sel.history, strict=False):
            assert tuple(step["blocks"]) == p
            current, best, winners = _reference_step(n, k, table, p, brute)
            assert step["current_total"] == pytest.approx(current, abs=1e-12)
            assert step["best_total"] == pytest.approx(best, abs=1e-12)
            chosen = tuple(sorted(b for s, e in step["chosen"] for b in range(s, e + 1)))
            if best > current + 1e-12:
                assert chosen in winners and chosen == min(winners)
            else:
                assert chosen == p
        ref_blocks, ref_history = _reference_select(n, k, table, brute)
        assert sel.blocks == ref_blocks
        assert list(sel.history) == ref_history
        moved += len(sel.history) > 1
    assert moved >= 3  # the cases do exercise the update, not only the greedy start


def test_fbs_candidates_match_the_spec() -> None:
    for n, k, table in _random_tables():
        sel = fast_block_select(n, k, TableScorer(table))
        for step in sel.info["trace"]:
            p = tuple(step["blocks"])
            expected = _reference_candidates(n, k, table, p, brute=False)
            for g, cands in zip(_groups(p), expected, strict=True):
                got = [tuple(range(s, e + 1)) for s, e in step["candidates"][str(len(g))]]
                assert got == cands


def test_candidate_pool_is_invariant() -> None:
    # P always stays inside the first P ∪ A, and the alternatives are then that pool minus P.
    table = dpi_run_table(32, seed=3, synergy=0.9)
    sel = fast_block_select(32, 6, TableScorer(table))
    pools = {tuple(sorted(set(s["blocks"]) | set(s["alternatives"]))) for s in sel.info["trace"]}
    assert len(pools) == 1


def test_best_combination_small_cases() -> None:
    score = {(0, 1): 1.0, (1, 2): 3.0, (2, 3): 1.0, (0,): 0.5, (3,): 0.7, (4,): 0.1}.__getitem__
    cands = {2: [(0, 1), (1, 2), (2, 3)], 1: [(0,), (3,), (4,)]}
    total, runs = best_combination(5, {2: 1, 1: 1}, cands, score)
    assert runs == ((1, 2), (3,)) and total == pytest.approx(3.7)
    total, runs = best_combination(5, {2: 2}, cands, score)  # (1,2) blocks both others
    assert runs == ((0, 1), (2, 3)) and total == pytest.approx(2.0)
    assert best_combination(5, {2: 3}, cands, score) is None


# ---------------------------------------------------------------- counts and protocol


@pytest.mark.parametrize(("n", "k", "expected"), [(32, 5, 150), (40, 10, 355)])
def test_brute_force_evaluation_counts(n: int, k: int, expected: int) -> None:
    assert brute_force_evaluations(n, k) == expected
    table = dpi_run_table(n, seed=0, max_length=k)
    brute = brute_force_select(n, k, TableScorer(table))
    assert brute.evaluations == expected
    fbs = fast_block_select(n, k, TableScorer(table))
    assert fbs.evaluations < expected / 3
    assert fbs.evaluations == len(fbs.run_scores)


def test_batch_protocol_one_round_trip_per_step() -> None:
    table = dpi_run_table(32, seed=5, synergy=0.9, max_length=6)
    batch = BatchTableScorer(table)
    sel = fast_block_select(32, 6, batch)
    # singles, then one batch per iteration that had anything new to score
    steps_with_new = sum(1 for s in sel.info["trace"] if s["new_evaluations"])
    assert len(batch.batches) == 1 + steps_with_new
    assert batch.batches[0] == [(i,) for i in range(32)]
    asked = [r for b in batch.batches for r in b]
    assert len(asked) == len(set(asked)) == sel.evaluations
    assert sel.info["score_calls"] == len(batch.batches)

    brute = BatchTableScorer(table)
    assert brute_force_select(32, 6, brute).evaluations == brute_force_evaluations(32, 6)
    assert len(brute.batches) == 1

    plain = TableScorer(table)  # a plain callable: still every run exactly once
    assert fast_block_select(32, 6, plain).blocks == sel.blocks
    assert len(plain.asked) == len(set(plain.asked)) == sel.evaluations


def test_noisy_scorer_is_seen_as_one_function() -> None:
    # Every call returns a fresh random number: the cache makes each run's score fixed, so the
    # search terminates by its own argument, without the cycle guard.
    rng = random.Random(0)
    calls: list[Run] = []

    def noisy(run: Run) -> float:
        calls.append(run)
        return rng.random() / len(run)

    sel = fast_block_select(24, 6, noisy)
    assert sel.info["stop"] == "converged"
    assert len(calls) == len(set(calls)) == sel.evaluations


def test_max_iterations_caps_the_loop() -> None:
    table = _table(10, {3: 0.95, 4: 0.94, 7: 0.93, 8: 0.92}, {(3, 4): 0.2, (7, 8): 0.8})
    sel = fast_block_select(10, 2, TableScorer(table), max_iterations=1)
    assert sel.info["stop"] == "max_iterations" and sel.blocks == (7, 8)


def test_nan_score_names_the_run() -> None:
    table = _table(8, {2: 0.9, 3: 0.8}, {(2, 3): float("nan")})
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        fast_block_select(8, 2, TableScorer(table))


@pytest.mark.parametrize("k", [0, 8, 9, -1])
def test_bad_n_prune_is_rejected_before_scoring(k: int) -> None:
    scorer = TableScorer({}, default=0.5)
    for fn in (fast_block_select, brute_force_select):
        with pytest.raises(ValueError, match="n_prune|cannot drop"):
            fn(8, k, scorer)
    assert scorer.asked == []


def test_cached_scorer_shares_but_counts_per_algorithm() -> None:
    table = dpi_run_table(16, seed=2, max_length=4)
    shared = CachedRunScorer(TableScorer(table), 16)
    brute = brute_force_select(16, 4, shared)
    fbs = fast_block_select(16, 4, shared)
    assert brute.evaluations == brute_force_evaluations(16, 4)
    assert fbs.evaluations < brute.evaluations
    assert shared.evaluations == brute.evaluations  # FBS asked for nothing new


def test_helpers() -> None:
    assert contiguous_groups([7, 2, 3]) == [(2, 3), (7,)]
    assert [top_k(ell, 100) for ell in (1, 2, 9, 10, 11, 100, 101)] == [5, 6, 6, 6, 7, 7, 8]
    assert top_k(3, 2) == 2
    assert run_total((1, 2, 5), {(1, 2): 0.5, (5,): 0.25}) == 0.75
