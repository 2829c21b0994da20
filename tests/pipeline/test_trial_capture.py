"""Which store a trial reads, and the stage-rule checks: decided from the specs before any weight loads."""

from __future__ import annotations

import pytest

from blockprune.calibration.settings import CaptureSettings, key_settings
from blockprune.errors import BadInputError
from blockprune.pipeline.config import TrialSpec
from blockprune.pipeline.prepare import trial_capture, validate_trial
from blockprune.study.record import trial_key


def test_per_window_estimators_read_whole_windows_with_position_0() -> None:
    base = CaptureSettings(sample_rows=1024, seed=3)
    w = trial_capture(TrialSpec("entrodrop", 4), base)  # default estimator entropy.knn_window
    assert (w.sampling, w.include_bos, w.sample_rows, w.seed) == ("windows", True, 1024, 3)
    for t in (TrialSpec("entrodrop", 4, estimator="entropy.bucket"), TrialSpec("mi_fbs", 4), TrialSpec("shortgpt", 4)):
        assert trial_capture(t, base) is base


def test_default_sampling_leaves_keys_and_fingerprints_unchanged() -> None:
    """Stores and study runs made before ``sampling`` existed keep their keys."""
    assert "sampling" not in key_settings(CaptureSettings())
    assert key_settings(CaptureSettings(sampling="windows"))["sampling"] == "windows"


@pytest.mark.parametrize("trial, message", [
    (TrialSpec("shortgpt", 4, stage_rule="fixed"), "stage_rule applies to entrodrop only"),
    (TrialSpec("entrodrop", 4, stage_rule="sometimes"), "stage_rule must be one of fixed, curve"),
])
def test_bad_stage_rules_are_one_line_errors(trial: TrialSpec, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        validate_trial(trial, 30)


def test_study_keys_keep_the_curve_runs_and_separate_the_fixed_rule() -> None:
    legacy = "m|c|entrodrop|entropy.bucket|layer|k=4"
    assert trial_key("m|c", "entrodrop", "entropy.bucket", "layer", 4, None, "curve") == legacy
    assert trial_key("m|c", "entrodrop", "entropy.bucket", "layer", 4) == legacy + "|rule=fixed"
    assert trial_key("m|c", "shortgpt", None, "layer", 4) == "m|c|shortgpt|-|layer|k=4"
