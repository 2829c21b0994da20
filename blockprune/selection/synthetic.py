"""Synthetic run-score tables with a known structure, for tests, benchmarks and examples.

Real run MI needs a model and a KSG estimate; the search algorithms only need *a* function of runs
that behaves like one. :func:`dpi_run_table` builds one that obeys the data-processing inequality
(MI of a run never rises as the run extends, at either end), which is the property FBS's
sum-of-singles estimate and the group-structure argument rely on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

Run = tuple[int, ...]


def dpi_run_table(
    n_blocks: int,
    seed: int,
    *,
    base: float = 1.0,
    mean_loss: float = 0.05,
    synergy: float = 0.6,
    noise: float = 0.01,
    max_length: int | None = None,
) -> dict[Run, float]:
    """MI of every run of length ≤ ``max_length``: ``base − Σ loss + Σ overlap + noise``, made DPI-consistent.

    Each block loses a random positive amount of information (log-normal around ``mean_loss``).
    Neighbouring blocks overlap in what they lose (``overlap_k ≤ synergy × min(loss_k, loss_k+1)``),
    so a contiguous run can lose less than the sum of its blocks: the structure MI-PRUN's run search
    exploits and greedy misses. Noise mimics the estimator. DPI is then enforced exactly:
    ``MI(i..j) = min(raw, MI(i..j−1), MI(i+1..j))``, clipped at 0.
    """
    rng = np.random.default_rng(seed)
    loss = rng.lognormal(mean=np.log(mean_loss), sigma=0.8, size=n_blocks)
    overlap = synergy * rng.uniform(0.0, 1.0, size=max(n_blocks - 1, 0)) * np.minimum(loss[:-1], loss[1:])
    top = n_blocks if max_length is None else min(max_length, n_blocks)
    table: dict[Run, float] = {}
    for length in range(1, top + 1):
        for s in range(n_blocks - length + 1):
            e = s + length - 1
            raw = base - loss[s : e + 1].sum() + overlap[s:e].sum() + noise * rng.standard_normal()
            v = max(0.0, float(raw))
            if length > 1:
                v = min(v, table[tuple(range(s, e))], table[tuple(range(s + 1, e + 1))])
            table[tuple(range(s, e + 1))] = v
    return table


def run_total(blocks: Iterable[int], score: Mapping[Run, float]) -> float:
    """Σ score over the maximal contiguous runs of ``blocks``: the objective the run search raises."""
    total = 0.0
    run: list[int] = []
    for b in sorted(set(blocks)):
        if run and b != run[-1] + 1:
            total += score[tuple(run)]
            run = []
        run.append(b)
    if run:
        total += score[tuple(run)]
    return total


class TableScorer:
    """A run scorer over a fixed table; counts plain and batch calls so tests can check traffic."""

    def __init__(self, table: Mapping[Run, float], default: float | None = None) -> None:
        self.table = dict(table)
        self.default = default
        self.asked: list[Run] = []
        self.batches: list[list[Run]] = []

    def _get(self, run: Sequence[int]) -> float:
        t = tuple(run)
        self.asked.append(t)
        if t in self.table:
            return self.table[t]
        if self.default is None:
            raise KeyError(f"run {t} not in table")
        return self.default

    def __call__(self, run: Run) -> float:
        return self._get(run)


class BatchTableScorer(TableScorer):
    """The same, speaking the batch protocol (one ``score_runs`` call per step)."""

    def score_runs(self, runs: list[Run]) -> list[float]:
        self.batches.append(list(runs))
        return [self._get(r) for r in runs]
