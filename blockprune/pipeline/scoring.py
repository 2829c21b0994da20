"""Score and select one trial from a store, and turn the selection into a plan.

Where a method's block scores come from is read from its spec, never from its name:

- ``needs == "none"``: positions only (sequential, reverse);
- no estimator and a ``stat``: the every-token streaming statistic in the store's manifest (BI, relative
  magnitude);
- an entropy estimator: ΔH per block from boundary entropies (EntroDrop);
- any other estimator: a run scorer (single blocks for ``needs == "block"``, contiguous runs otherwise).

Who computes exact scores is the :class:`Scorers` the backend hands in: in this process, or Ray tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from blockprune import estimators
from blockprune.calibration.scoring import EntropyScorer, StoreRunScorer
from blockprune.calibration.store import ActivationStore
from blockprune.pipeline.config import TrialSpec
from blockprune.selection.methods import METHODS, select
from blockprune.selection.plan import PrunePlan
from blockprune.selection.result import Selection


class Scorers(Protocol):
    """Where exact scores are computed; both methods read and fill the store's score cache."""

    def run_scorer(self, store: ActivationStore, estimator: str, params: dict[str, Any],
                   granularity: str) -> StoreRunScorer: ...

    def entropy_increase(self, store: ActivationStore, estimator: str, params: dict[str, Any],
                         granularity: str) -> tuple[list[float], dict[str, float]]: ...


class LocalScorers:
    """Exact scores computed in this process (and cached beside the store)."""

    def __init__(self) -> None:
        self.scorers: list[StoreRunScorer | EntropyScorer] = []

    def run_scorer(self, store: ActivationStore, estimator: str, params: dict[str, Any],
                   granularity: str) -> StoreRunScorer:
        scorer = StoreRunScorer(store, estimator, params, granularity)
        self.scorers.append(scorer)
        return scorer

    def entropy_increase(self, store: ActivationStore, estimator: str, params: dict[str, Any],
                         granularity: str) -> tuple[list[float], dict[str, float]]:
        scorer = EntropyScorer(store, estimator, params)
        self.scorers.append(scorer)
        return scorer.increase(granularity)

    def counters(self) -> tuple[int, int]:
        """(exact scores computed, batches computed) by every scorer handed out so far."""
        return sum(s.computed for s in self.scorers), sum(s.batches for s in self.scorers)


@dataclass
class ScoredSelection:
    """A trial's selection with the evidence behind it: per-block scores, exact run scores, extra info."""

    selection: Selection
    scores: dict[str, list[float]] = field(default_factory=dict)
    run_scores: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> tuple[int, ...]:
        return self.selection.blocks

    def to_plan(self, trial: TrialSpec, store: ActivationStore, *, model_id: str, revision: str | None,
                n_blocks: int, calibration: Any) -> PrunePlan:
        sel = self.selection
        return PrunePlan(
            model_id=model_id,
            revision=revision,
            n_blocks=n_blocks,
            blocks=sel.blocks,
            granularity=trial.granularity,  # type: ignore[arg-type]
            method=trial.method,
            estimator=trial.estimator,
            estimator_params=dict(trial.estimator_params),
            calibration=calibration,
            scores=self.scores,
            run_scores=self.run_scores,
            info={**{k: v for k, v in sel.info.items() if k != "trace"}, **self.info,
                  "evaluations": sel.evaluations, "store": store.checksum},
        )


def score_and_select(store: ActivationStore, trial: TrialSpec, scorers: Scorers | None = None) -> ScoredSelection:
    """The selection of one trial from a store, every exact score computed through ``scorers``."""
    scorers = scorers or LocalScorers()
    spec = METHODS.get(trial.method)
    n = store.n_layers
    g = trial.granularity
    stats = store.stats[g]
    scores: dict[str, list[float]] = {"bi": list(stats["bi"])}
    block_scores = None
    scorer = None
    info: dict[str, Any] = {}
    if spec.needs == "none":
        pass
    elif trial.estimator is None:
        if spec.stat is None:
            raise ValueError(f"method {trial.method!r} has neither an estimator nor a streaming statistic")
        block_scores = list(stats[spec.stat])
        if spec.score and spec.score not in scores:
            scores[spec.score] = block_scores
    elif estimators.get(trial.estimator).kind == "entropy":
        delta_h, entropies = scorers.entropy_increase(store, trial.estimator, trial.estimator_params, g)
        block_scores = scores[spec.score or "delta_h"] = delta_h
        info["entropy"] = entropies
    else:
        scorer = scorers.run_scorer(store, trial.estimator, trial.estimator_params, g)
        if spec.needs == "block":
            block_scores = scorer.block_scores()
            scores[spec.score or trial.estimator] = block_scores
    sel = select(trial.method, n, trial.n_prune, block_scores=block_scores, score_run=scorer, s_start=trial.s_start,
                 stage_rule=trial.stage_rule)  # type: ignore[arg-type]
    run_scores: dict[str, float] = {}
    if scorer is not None and scorer.cache is not None:
        run_scores = dict(scorer.cache.values)
        singles = [run_scores.get(f"{i}-{i}") for i in range(n)]
        if all(v is not None for v in singles):
            scores[spec.score or "score"] = singles  # type: ignore[assignment]
    return ScoredSelection(sel, scores, run_scores, info)
