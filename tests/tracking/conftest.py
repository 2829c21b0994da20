"""Fixtures for tracking tests: a real sqlite store with a logged job, a real ``mlflow server``.

The server is started with ``infra/mlflow/mlflow-server.sh`` (so the script is exercised too),
bound to 127.0.0.1 on a free port, waited for on ``/health`` and always stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "HF_HUB_OFFLINE": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}.items():
    os.environ.setdefault(_key, _value)

sys.path.insert(0, str(Path(__file__).parent))

from tracking_helpers import THREE_TRIALS, LoggedJob, Server, free_port, log_job, wait_health  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = REPO / "infra" / "mlflow" / "mlflow-server.sh"
SERVER_START_TIMEOUT = 120.0


@pytest.fixture(autouse=True)
def _no_ambient_tracking_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests name their store explicitly; a developer's MLFLOW_TRACKING_URI must not leak in."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def sqlite_job(tmp_path_factory: pytest.TempPathFactory) -> LoggedJob:
    """A 3-trial job (shortgpt, entrodrop, mi_fbs) logged to a fresh sqlite store."""
    from blockprune.tracking.tracker import Tracker

    root = tmp_path_factory.mktemp("sqlite-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker(uri, "synthetic")
    parent_id, results = log_job(tracker, THREE_TRIALS)
    assert parent_id is not None
    return LoggedJob(uri, "synthetic", parent_id, results, root)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``mlflow server`` (sqlite backend, proxied local artifacts) on 127.0.0.1:<free port>."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_HOME": str(root), "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port),
           "MLFLOW_WORKERS": "1", "MLFLOW_BIN": str(Path(sys.executable).parent / "mlflow"),
           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{root / 'db' / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts")}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(["bash", str(SERVER_SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_health(url, SERVER_START_TIMEOUT, proc)
        except (TimeoutError, RuntimeError) as e:
            log.flush()
            raise RuntimeError(f"{e}\n{(root / 'server.log').read_text()[-3000:]}") from None
        yield Server(url, root, proc)
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (it forks workers), SIGKILL after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
