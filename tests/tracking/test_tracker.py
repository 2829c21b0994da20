"""Tracker defaults and failure modes: default store, no-tracking, fail-fast on an unreachable server."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest
from tracking_helpers import free_port

from blockprune.tracking.tracker import (
    Tracker,
    TrackingUnavailableError,
    check_store,
    default_tracking_uri,
    flatten,
)


@pytest.mark.unit
def test_default_uri_is_sqlite_in_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert Tracker().tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert Tracker().tracking_uri == "http://127.0.0.1:1"
    assert Tracker("sqlite:////x/y.db").tracking_uri == "sqlite:////x/y.db"  # explicit beats the env


@pytest.mark.unit
def test_unreachable_server_fails_within_seconds() -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(TrackingUnavailableError, match="cannot reach the MLflow tracking server") as e:
        Tracker(uri).check()
    assert time.perf_counter() - t0 < 5.0
    assert uri in str(e.value) and "--no-tracking" in str(e.value)


@pytest.mark.unit
def test_missing_sqlite_folder_fails_before_work(tmp_path: Path) -> None:
    with pytest.raises(TrackingUnavailableError, match="does not exist"):
        check_store(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")


@pytest.mark.unit
def test_disabled_tracker_is_a_no_op(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-tracking: nothing is created, even with an unreachable server configured."""
    from blockprune.tracking.artifacts import log_job_summary, log_samples, log_trial
    from blockprune.tracking.tracker import Tracker as T

    monkeypatch.chdir(tmp_path)
    tr = T(f"http://127.0.0.1:{free_port()}", enabled=False)
    tr.check()
    with tr.run("job", params={"a": 1}) as rid:
        assert rid is None
        tr.log_metrics({"x": 1.0})
        tr.log_series("s", [1.0, 2.0])
        from tracking_helpers import THREE_TRIALS, make_plan

        log_trial(tr, make_plan(THREE_TRIALS[0]), {}, samples=[{"prompt": "a", "completion": "b"}])
        log_samples(tr, [{"prompt": "a"}])
        log_job_summary(tr, [])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
def test_tracker_pickles_for_ray() -> None:
    tr = Tracker("sqlite:////tmp/x.db", "e", job_id="abc")
    back = pickle.loads(pickle.dumps(tr))
    assert (back.tracking_uri, back.experiment, back.job_id, back._mlflow) == ("sqlite:////tmp/x.db", "e", "abc", None)
    assert back._job_tags == {} and back._job_run_id is None


@pytest.mark.unit
def test_telemetry_off_unless_user_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from blockprune.env import apply_env_defaults

    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    apply_env_defaults()
    import os

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    apply_env_defaults()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"


@pytest.mark.unit
def test_flatten_gives_stable_dotted_names() -> None:
    flat = flatten({"calibration": {"corpus": "wiki", "n_samples": 4}, "estimator_params": {"k": 3, "p": None},
                    "tasks": ("piqa", "arc_easy")})
    assert flat == {"calibration.corpus": "wiki", "calibration.n_samples": "4", "estimator_params.k": "3",
                    "estimator_params.p": "None", "tasks": '["piqa", "arc_easy"]'}


@pytest.mark.integration
def test_calibrate_with_unreachable_server_stops_before_loading_the_model(capsys: pytest.CaptureFixture[str]) -> None:
    """The real CLI: exit 2 with a clear message, in seconds (no model load, no capture)."""
    from blockprune.jobs.calibrate import main

    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.perf_counter()
    rc = main(["--model", "smollm2-135m", "--corpus", "lee-news", "--method", "shortgpt", "--prune", "2",
               "--tracking-uri", uri, "--quiet"])
    assert rc == 2
    assert time.perf_counter() - t0 < 30.0
    err = capsys.readouterr().err
    assert "cannot reach the MLflow tracking server" in err and uri in err
