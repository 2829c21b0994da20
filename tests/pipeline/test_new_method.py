"""Adding a selection method is one spec entry: registered here, it works in calibrate, sweep validation
and the study's tables without any other file knowing about it."""

from __future__ import annotations

import json

import pytest

from blockprune.selection import METHODS, register_method, select_highest

pytestmark = pytest.mark.integration

NAME = "test_most_change"


@pytest.fixture
def throwaway_method():
    """Drops the blocks with the HIGHEST relative magnitude (the opposite of the baseline): a method no
    other file mentions, fed by a streaming statistic the store already has."""

    @register_method(NAME, "block", "highest", "relative_magnitude", "test: highest relative magnitude",
                     stat="relmag", label="most change (test)", family="mi")
    def _most_change(n_blocks, n_prune, *, block_scores, **_):
        return select_highest(block_scores, n_prune)

    yield NAME
    METHODS.unregister(NAME)


def test_calibrate_runs_a_method_registered_in_one_place(throwaway_method, tmp_path, capsys) -> None:
    from blockprune.jobs.calibrate import main

    args = ["--model", "smollm2-135m", "--corpus", "lee-news", "--n-samples", "4", "--seq-len", "64",
            "--sample-rows", "128", "--eval-windows", "2", "--quiet", "--no-tracking", "--store-root",
            str(tmp_path), "--method", NAME, "--method", "relative_magnitude", "--prune", "3"]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    mine, baseline = rows
    assert mine["trial"] == f"{NAME}/layer/k=3" and len(mine["blocks"]) == 3
    assert set(mine["blocks"]).isdisjoint(baseline["blocks"])  # highest vs lowest of the same statistic


def test_sweep_validation_and_grid_accept_it(throwaway_method) -> None:
    from blockprune.pipeline.sweep_spec import parse_spec, validate_spec

    spec = parse_spec({"models": ["smollm2-135m"], "calibration": ["lee-news"], "methods": [NAME, "mi_fbs"],
                       "estimators": ["mi.ksg"], "n_prune": [2, 4], "granularity": ["layer", "attention"]})
    validate_spec(spec)
    names = [t.name for t in spec.trials]
    assert f"{NAME}/layer/k=2" in names and f"{NAME}/attention/k=4" in names
    assert not any(n.startswith("mi_fbs") and "attention" in n for n in names)  # a run method stays at layers


def test_the_study_names_and_groups_it_from_its_spec(throwaway_method) -> None:
    from blockprune.study.spec import parse_spec
    from blockprune.study.tables import display, family

    spec = parse_spec({"models": {"smollm2-135m": {"layer": [2]}}, "methods": {"layer": [NAME, "shortgpt"]}})
    (trial, _) = spec.trials(spec.models[0])
    assert trial.method == NAME and trial.estimator is None
    assert display(NAME) == "most change (test)" and family(NAME) == "mi"


def test_an_unregistered_method_is_refused_with_the_known_names() -> None:
    from blockprune.pipeline.config import TrialSpec
    from blockprune.pipeline.prepare import validate_trial
    from blockprune.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match=f"unknown selection method '{NAME}'.*shortgpt"):
        validate_trial(TrialSpec(NAME, 2), 30)
