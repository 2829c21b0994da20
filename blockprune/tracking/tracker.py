"""MLflow logging for jobs (parent runs) and trials (child runs).

Defaults: no configuration → ``sqlite:///mlflow.db`` in the working directory;
``MLFLOW_TRACKING_URI`` or ``tracking_uri`` for a server; ``enabled=False`` turns logging off
(every method becomes a no-op, so callers never branch). Telemetry is off unless the user
turned it on (:func:`blockprune.env.apply_env_defaults` runs before mlflow is imported).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from blockprune.env import apply_env_defaults
from blockprune.errors import ResourceError

apply_env_defaults()


class TrackingUnavailableError(ResourceError):
    """The tracking server cannot be reached."""


# Tags every run of a job carries, so a child run found on its own still names its job.
JOB_ID_TAG = "blockprune.job_id"
KIND_TAG = "blockprune.kind"
GIT_TAG = "blockprune.git_commit"
SUBMISSION_TAG = "ray.submission_id"
INHERITED_TAGS = (JOB_ID_TAG, GIT_TAG, SUBMISSION_TAG, "model", "model_revision", "store_checksum")


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
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise TrackingUnavailableError(f"tracking store folder {folder} does not exist ({uri}); {hint}")


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


class Tracker:
    """Thin layer over MLflow's fluent API that knows blockprune's run structure."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "blockprune", enabled: bool = True,
                 job_id: str | None = None) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self.job_id = job_id or new_job_id()
        self._mlflow: Any = None
        # The job (parent) run of the calling thread: a sweep runs several jobs on one tracker.
        self._local = threading.local()

    @property
    def _job_tags(self) -> dict[str, str]:
        return getattr(self._local, "job_tags", {})

    @property
    def _job_run_id(self) -> str | None:
        return getattr(self._local, "job_run_id", None)

    def _set_job(self, tags: dict[str, str], run_id: str | None) -> None:
        self._local.job_tags, self._local.job_run_id = tags, run_id

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for Ray: the mlflow module is re-imported (and re-pointed) on the other side;
        the calling thread's job run travels, so a remote child run inherits its tags."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_mlflow", "_local")}
        state["_job"] = (dict(self._job_tags), self._job_run_id)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        job_tags, job_run_id = state.pop("_job", ({}, None))
        self.__dict__.update(state)
        self._mlflow = None
        self._local = threading.local()
        self._set_job(job_tags, job_run_id)

    @property
    def mlflow(self) -> Any:
        """The fluent module pointed at this tracker's store; re-pointed if another tracker moved it.

        MLflow's tracking URI and active experiment are process-global, so two trackers in one
        process (a test, a sweep driver) would otherwise log into each other's store.
        """
        import mlflow

        if self._mlflow is None or mlflow.get_tracking_uri() != self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
            ensure_experiment(self.tracking_uri, self.experiment)
            mlflow.set_experiment(self.experiment)
            self._mlflow = mlflow
        return self._mlflow

    def check(self, timeout: float = 5.0) -> None:
        """Fail fast (before any capture) when a tracking server is unreachable."""
        if not self.enabled:
            return
        uri = self.tracking_uri
        hint = "start it, fix --tracking-uri / MLFLOW_TRACKING_URI, or pass --no-tracking"
        check_store(uri, timeout, hint)
        try:
            _ = self.mlflow  # creates the sqlite store / experiment now, not after capture
        except Exception as e:  # any store failure here must stop the job before capture, not after
            self._mlflow = None
            raise TrackingUnavailableError(f"cannot open the MLflow tracking store {uri}: {e}; {hint}") from e

    @contextlib.contextmanager
    def run(self, name: str, *, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
            nested: bool = False, parent_run_id: str | None = None) -> Iterator[str | None]:
        """A run (a job's parent run, or a nested trial run); yields the run id.

        Every run gets the job id, the git commit and the Ray submission id; a nested run also
        inherits its parent's model / revision / store tags. ``parent_run_id`` makes a child of a
        parent started in another process (a Ray actor), where ``nested`` has no active parent.
        """
        if not self.enabled:
            yield None
            return
        mlflow = self.mlflow
        base = {JOB_ID_TAG: self.job_id, GIT_TAG: git_commit() or "unknown"}
        sid = submission_id()
        if sid:
            base[SUBMISSION_TAG] = sid
        child = nested or parent_run_id is not None
        inherited = {k: v for k, v in self._job_tags.items() if k in INHERITED_TAGS} if child else {}
        all_tags = {k: str(v) for k, v in {**base, **inherited, **(tags or {})}.items()}
        kwargs: dict[str, Any] = {"parent_run_id": parent_run_id} if parent_run_id else {"nested": nested}
        with mlflow.start_run(run_name=name, tags=all_tags, **kwargs) as r:
            if not child:
                self._set_job(dict(all_tags), r.info.run_id)
            if params:
                self.log_params(params)
            yield r.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            flat = flatten(params)
            items = list(flat.items())
            for i in range(0, len(items), 90):
                self.mlflow.log_params(dict(items[i : i + 90]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.enabled:
            clean = {k: float(v) for k, v in metrics.items() if v is not None}
            if clean:
                self.mlflow.log_metrics(clean, step=step)

    def log_series(self, name: str, values: Sequence[float], steps: Sequence[int] | None = None) -> None:
        """One metric per block: ``step`` = block index (or ``steps``), so MLflow plots it as a curve."""
        if not self.enabled:
            return
        self.log_series_batch({name: (values, steps)})

    def log_series_batch(self, series: Mapping[str, tuple[Sequence[float], Sequence[int] | None]]) -> None:
        """Many curves in as few requests as possible (one ``log_batch`` per 900 points).

        Non-finite values are skipped: MLflow stores NaN, but a server round-trips it badly.
        """
        if not self.enabled:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        metrics = []
        for name, (values, steps) in series.items():
            idx = range(len(values)) if steps is None else steps
            for step, v in zip(idx, values, strict=True):
                if v is not None and _finite(v):
                    metrics.append(Metric(name, float(v), ts, int(step)))
        run_id = self.active_run_id()
        client = self.client()
        for i in range(0, len(metrics), 900):
            client.log_batch(run_id, metrics=metrics[i : i + 900])

    def client(self) -> Any:
        """An ``MlflowClient`` on this tracker's URI."""
        return self.mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def active_run_id(self) -> str | None:
        if not self.enabled:
            return None
        run = self.mlflow.active_run()
        return run.info.run_id if run else None

    def run_params(self, run_id: str | None = None) -> dict[str, str]:
        """Params already logged on a run (the active one by default): MLflow params cannot change."""
        run_id = run_id or self.active_run_id()
        if not self.enabled or run_id is None:
            return {}
        return dict(self.client().get_run(run_id).data.params)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.mlflow.log_text(text, artifact_file)

    def log_dict(self, d: Any, artifact_file: str) -> None:
        if self.enabled:
            self.mlflow.log_dict(d, artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        if self.enabled:
            self.mlflow.log_figure(fig, artifact_file)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """Any file content (a PNG rendered once and reused, a parquet table …)."""
        if not self.enabled:
            return
        with tmp_artifact_dir() as d:
            path = Path(d) / Path(artifact_file).name
            path.write_bytes(data)
            parent = str(Path(artifact_file).parent)
            self.mlflow.log_artifact(str(path), None if parent in ("", ".") else parent)

    def log_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        if self.enabled:
            self.mlflow.log_table(data=dict(data), artifact_file=artifact_file)

    def log_artifact_dir(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.mlflow.log_artifacts(str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            clean = {k: str(v) for k, v in tags.items()}
            self.mlflow.set_tags(clean)
            if self._job_run_id is not None and self.active_run_id() == self._job_run_id:
                self._set_job({**self._job_tags, **clean}, self._job_run_id)  # trials inherit e.g. the checksum

    def describe(self, run_id: str | None) -> str:
        """Where to find a run, for the terminal."""
        if not self.enabled or run_id is None:
            return "tracking disabled"
        exp = self.mlflow.get_experiment_by_name(self.experiment)
        where = f"{self.tracking_uri} · experiment {self.experiment!r} (id {exp.experiment_id}) · run {run_id}"
        if self.tracking_uri.startswith("http"):
            where += f"\n  {self.tracking_uri.rstrip('/')}/#/experiments/{exp.experiment_id}/runs/{run_id}"
        else:
            where += f"\n  view with: mlflow ui --backend-store-uri {self.tracking_uri}"
        return where


def tmp_artifact_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="blockprune-artifacts-")


def _finite(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))
