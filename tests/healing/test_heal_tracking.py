"""Reading healed metrics back for ``blockprune compare``: the latest finished heal run per trial, in a real store."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from blockprune.healing.run import FitOutcome, HealResult
from blockprune.healing.tracking import heal_run, healed_metrics, log_result
from blockprune.tracking.tracker import Tracker

pytestmark = pytest.mark.integration


def _result(ppl_after: float) -> HealResult:
    fit = FitOutcome(steps=10, tokens=10 * 8 * 256, seconds=60.0, stopped=None)
    return HealResult(source="s", plan={}, config={}, out_dir="o", merged_path="o/merged", adapter_path="o/adapter",
                      fit=fit, ppl_before={"wikipedia": 300.0}, ppl_after={"wikipedia": ppl_after},
                      ppl_dense={"wikipedia": 60.0})


def test_latest_finished_heal_per_trial(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "blockprune")
    with tracker.run("job", tags={"blockprune.kind": "job"}):
        with tracker.run("a", nested=True, tags={"blockprune.kind": "trial"}) as trial_a:
            pass
        with tracker.run("b", nested=True, tags={"blockprune.kind": "trial"}) as trial_b:
            pass
    for i, ppl in enumerate((150.0, 120.0)):  # the second healing of trial a is the one to show
        with heal_run(tracker, "heal", parent_run_id=trial_a, params={"n": i}, tags={}, out_dir=tmp_path / f"h{i}",
                      resume=False):
            log_result(tracker, _result(ppl), "completed")
        time.sleep(0.01)
    with pytest.raises(RuntimeError), heal_run(tracker, "heal", parent_run_id=trial_a, params={}, tags={},
                                               out_dir=tmp_path / "failed", resume=False):
        tracker.log_metrics({"ppl_after.wikipedia": 1.0})
        raise RuntimeError("crashed mid-way")  # a FAILED run is never shown
    got = healed_metrics([trial_a, trial_b], uri)
    assert set(got) == {trial_a}
    m = got[trial_a]
    assert m["ppl_after.wikipedia"] == 120.0 and m["ppl_ratio_after.wikipedia"] == pytest.approx(2.0)
    assert m["log_gap_recovered.wikipedia"] == pytest.approx(1 - math.log(2.0) / math.log(5.0))
    assert m["status"] == "completed" and m["merged_path"] == "o/merged" and m["tokens_trained"] == 20480
