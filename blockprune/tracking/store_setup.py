"""Setting up an MLflow store safely: reachability and writability checks that fail in seconds, creation
under a file lock, experiments with artifacts beside a sqlite database, and the facts every run is tagged
with (git commit, job id, Ray submission id, process identity).

Split from :mod:`blockprune.tracking.tracker` so the tracker module is the Tracker; these are plain
functions that need no run.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from blockprune.errors import ResourceError


class TrackingUnavailableError(ResourceError):
    """The tracking server cannot be reached."""


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → MLflow params with dotted names (values as short strings)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(list(v))[:6000]
        elif v is None:
            out[key] = "None"
        else:
            out[key] = str(v)[:6000]
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """Commit of the blockprune checkout; ``BLOCKPRUNE_GIT_COMMIT`` where there is no .git (Ray working_dir)."""
    if os.environ.get("BLOCKPRUNE_GIT_COMMIT"):
        return os.environ["BLOCKPRUNE_GIT_COMMIT"]
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def new_job_id() -> str:
    """``BLOCKPRUNE_JOB_ID`` when a launcher set one (so all processes of a job share it), else a fresh id."""
    return os.environ.get("BLOCKPRUNE_JOB_ID") or uuid.uuid4().hex[:12]


def check_store(uri: str, timeout: float = 5.0, hint: str = "start it or fix --tracking-uri / MLFLOW_TRACKING_URI"
                ) -> None:
    """Raise :class:`TrackingUnavailableError` within ``timeout`` s if ``uri`` cannot be used.

    Why not let MLflow find out: its REST client retries with exponential backoff for minutes,
    and a job would only learn after capture. A server must answer 200 on ``/health``; a sqlite
    store's folder must exist.
    """
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise TrackingUnavailableError(f"MLflow server {uri} answered {r.status} on /health; {hint}")
        except urllib.error.HTTPError as e:
            raise TrackingUnavailableError(
                f"MLflow tracking server at {uri} answered HTTP {e.code} on /health; {hint}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingUnavailableError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}); {hint}") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        folder = db.parent
        if not folder.is_dir():
            raise TrackingUnavailableError(f"tracking store folder {folder} does not exist ({uri}); {hint}")
        check_sqlite_writable(db, hint)


def check_sqlite_writable(db: Path, hint: str) -> None:
    """The database file (when it exists) and its folder (sqlite writes a journal beside it) must be writable.

    Real probes, not ``os.access``: root passes access checks on a read-only mount. Why here: MLflow
    itself retries a read-only store for minutes before it gives up."""
    try:
        with tempfile.NamedTemporaryFile(dir=db.parent, prefix=".blockprune-probe-"):
            pass
    except OSError as e:
        raise TrackingUnavailableError(
            f"tracking store folder {db.parent} is not writable ({e.strerror}); {hint}") from None
    if db.exists():
        try:
            with db.open("r+b"):
                pass
        except OSError as e:
            raise TrackingUnavailableError(f"tracking store {db} is not writable ({e.strerror}); {hint}") from None


def sqlite_lock(uri: str) -> Any:
    """A file lock beside a sqlite database (``<db>.lock``), or a no-op for other stores."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    db = Path(uri.removeprefix("sqlite:///"))
    return FileLock(str(db.with_name(db.name + ".lock")), timeout=300)


def open_store(uri: str, experiment: str) -> None:
    """Create (or migrate) the store and the experiment under the store's file lock.

    Why: MLflow builds a fresh sqlite schema with a series of migrations on first use; two processes
    doing that at once fail (``duplicate column name``, ``Online migration expected to match one row``).
    The first process creates it while the other waits, then finds it complete."""
    from mlflow import MlflowClient

    with sqlite_lock(uri):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        ensure_experiment(uri, experiment)


def sqlite_artifact_root(uri: str) -> Path | None:
    """``<folder of the .db>/mlruns`` for a sqlite store, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns"


def ensure_experiment(uri: str, name: str) -> None:
    """Create ``name`` with its artifacts beside a sqlite database, not under the working directory.

    Why: MLflow puts a sqlite store's artifacts in ``./mlruns`` of whatever directory the first
    run happened to start in; for a Ray job that is a temporary working_dir, deleted afterwards,
    and a later job from elsewhere scatters them again. A server store decides for itself.
    """
    root = sqlite_artifact_root(uri)
    if root is None:
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name(name) is not None:
        return
    folder = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "experiment"
    try:
        client.create_experiment(name, artifact_location=(root / folder).as_uri())
    except MlflowException:  # created meanwhile by another process of the same job
        if client.get_experiment_by_name(name) is None:
            raise


def submission_id() -> str | None:
    """The ``ray job submit`` submission id of this driver, if it runs as a submitted job.

    Ray passes it to the entrypoint in the job config's metadata (``RAY_JOB_CONFIG_JSON_ENV_VAR``),
    not as an environment variable of its own.
    """
    if os.environ.get("RAY_JOB_SUBMISSION_ID"):
        return os.environ["RAY_JOB_SUBMISSION_ID"]
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return json.loads(raw).get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None


def process_start(pid: int) -> str:
    """When process ``pid`` started (seconds since the epoch, as text), or "" when unknown."""
    try:
        import psutil

        return f"{psutil.Process(pid).create_time():.2f}"
    except Exception:  # no psutil, no such process, no permission: unknown
        return ""


def process_alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` on this host is still the process that started at ``started``."""
    now = process_start(pid)
    if not now:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return not started  # alive, start time unknown: alive only if nothing to compare
    return not started or abs(float(now) - float(started)) < 1.0
