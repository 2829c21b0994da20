"""Every registered method with every estimator its spec accepts, at every granularity it has, on a store."""

from __future__ import annotations

import pytest
from synthetic_store import synthetic_store

from blockprune import estimators
from blockprune.pipeline.config import TrialSpec
from blockprune.pipeline.prepare import validate_trial
from blockprune.pipeline.scoring import score_and_select
from blockprune.selection import METHODS
from blockprune.selection.plan import PrunePlan

N_LAYERS = 8


def _combinations() -> list[tuple[str, str | None, str]]:
    out = []
    for name in METHODS.names():
        spec = METHODS.get(name)
        ests: list[str | None] = [spec.default_estimator]
        if spec.estimator_kind is not None:
            ests += [e for e in estimators.names(spec.estimator_kind) if e != spec.default_estimator]
        for g in ("layer",) if spec.layer_only else ("layer", "attention", "mlp"):
            out += [(name, e, g) for e in ests]
    return out


COMBINATIONS = _combinations()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("synthetic") / "store", n_layers=N_LAYERS)


def test_the_grid_covers_every_method_and_estimator() -> None:
    assert {m for m, _, _ in COMBINATIONS} == set(METHODS.names())
    used = {e for _, e, _ in COMBINATIONS if e}
    kinds = {METHODS.get(m).estimator_kind for m in METHODS.names()} - {None}
    assert used == {e for k in kinds for e in estimators.names(k)}


@pytest.mark.parametrize(("method", "estimator", "granularity"), COMBINATIONS,
                         ids=[f"{m}-{e}-{g}" for m, e, g in COMBINATIONS])
def test_method_selects_from_a_store(store, method, estimator, granularity) -> None:
    # EntroDrop's detected stage boundary depends on the data; fix it so every estimator path is exercised
    s_start = 2 if method == "entrodrop" else None
    trial = TrialSpec(method, 3, granularity=granularity, estimator=estimator, s_start=s_start)
    validate_trial(trial, N_LAYERS)
    scored = score_and_select(store, trial)
    assert len(scored.blocks) == 3 and all(0 <= b < N_LAYERS for b in scored.blocks)
    spec = METHODS.get(method)
    assert all(len(v) == N_LAYERS for v in scored.scores.values())
    if spec.needs == "block":
        assert (spec.score or estimator) in scored.scores, scored.scores.keys()
    elif spec.needs == "run":  # exact scores of the runs it asked for, the chosen ones among them
        assert len(scored.run_scores) >= scored.selection.evaluations > 0
    plan = scored.to_plan(trial, store, model_id="synthetic", revision=None, n_blocks=N_LAYERS, calibration=None)
    assert PrunePlan.from_json(plan.to_json()) == plan
    assert plan.info["store"] == store.checksum
