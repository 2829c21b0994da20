"""MLflow logging for jobs (parent runs) and trials (child runs).

Defaults: no configuration → ``sqlite:///mlflow.db`` in the working directory;
``MLFLOW_TRACKING_URI`` or ``tracking_uri`` for a server; ``enabled=False`` turns logging off
(every method becomes a no-op, so callers never branch). Telemetry is off unless the user
turned it on (:func:`blockprune.env.apply_env_defaults` runs before mlflow is imported).

Reliability:

- a fresh sqlite store is created under a file lock beside the database, so concurrent jobs on one
  machine never run MLflow's schema migrations at the same time;
- :meth:`Tracker.check` fails in seconds on an unreachable server or an unwritable sqlite folder/file;
- a tracking failure after the check (the store deleted, read-only, a server gone) never loses a job's
  result: the tracker says so in one WARNING line, stops tracking, and records the failure in
  :attr:`Tracker.failure` for the caller to report at the end;
- a run ends KILLED, with the reason in the ``blockprune.end_reason`` tag, when the job is interrupted
  (SIGTERM/SIGINT, see :mod:`blockprune.jobs.entry`); a job run left RUNNING by a process that died
  without a chance to say so (SIGKILL, a lost node) is marked KILLED by the next run of the same job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from blockprune.env import apply_env_defaults
from blockprune.errors import ResourceError
from blockprune.tracking.store_setup import (  # noqa: F401 (re-exported: the names callers import from here)
    TrackingUnavailableError,
    check_sqlite_writable,
    check_store,
    default_tracking_uri,
    ensure_experiment,
    flatten,
    git_commit,
    new_job_id,
    open_store,
    process_alive,
    process_start,
    sqlite_artifact_root,
    sqlite_lock,
    submission_id,
)

apply_env_defaults()

log = logging.getLogger(__name__)
T = TypeVar("T")


class TrackingFailedError(ResourceError):
    """Tracking failed after the job started; the job's results were kept locally."""


class JobInterrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt: not an error of the job
    """A termination signal (SIGTERM) reached the job; runs end KILLED with the signal as the reason."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


# Tags every run of a job carries, so a child run found on its own still names its job.
JOB_ID_TAG = "blockprune.job_id"
KIND_TAG = "blockprune.kind"
GIT_TAG = "blockprune.git_commit"
SUBMISSION_TAG = "ray.submission_id"
JOB_KEY_TAG = "blockprune.job_key"
HOST_TAG = "blockprune.host"
PID_TAG = "blockprune.pid"
PID_START_TAG = "blockprune.pid_started"
END_REASON_TAG = "blockprune.end_reason"
INHERITED_TAGS = (JOB_ID_TAG, GIT_TAG, SUBMISSION_TAG, "model", "model_revision", "store_checksum", JOB_KEY_TAG,
                  HOST_TAG, PID_TAG, PID_START_TAG)


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
        # why tracking stopped mid-job (None while it works): the caller reports it and exits non-zero
        self.failure: str | None = None

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
            open_store(self.tracking_uri, self.experiment)
            mlflow.set_experiment(self.experiment)
            self._mlflow = mlflow
        return self._mlflow

    def _fail(self, what: str, e: BaseException) -> None:
        """Stop tracking after a store failure, with one WARNING line; the job goes on."""
        if self.failure is None:
            first = (str(e).strip().splitlines() or [""])[0][:300]
            self.failure = f"{what}: {type(e).__name__}: {first}"
            log.warning("MLflow tracking failed (%s at %s); the job goes on without tracking and exits non-zero "
                        "at the end", self.failure, self.tracking_uri)
            log.debug("tracking failure", exc_info=e)
        self.enabled = False

    def _guard(self, what: str, call: Callable[[], T], default: T) -> T:
        """``call()`` unless tracking is off or failed; a failure of the store turns tracking off."""
        if not self.enabled:
            return default
        try:
            with _quiet_store_errors():
                return call()
        except Exception as e:  # any failure of the tracking store: the job's result must survive it
            self._fail(what, e)
            return default

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
            nested: bool = False, parent_run_id: str | None = None, job_key: str | None = None
            ) -> Iterator[str | None]:
        """A run (a job's parent run, or a nested trial run); yields the run id (None without tracking).

        Every run gets the job id, the git commit, the Ray submission id, and the host and process that
        own it; a nested run also inherits its parent's model / revision / store tags. ``parent_run_id``
        makes a child of a parent started in another process (a Ray actor), where ``nested`` has no active
        parent. ``job_key`` (a job run) identifies the job across processes: runs of the same job left
        RUNNING by a dead process on this host are marked KILLED first. The run ends FINISHED, FAILED on an
        exception, KILLED (with ``blockprune.end_reason``) on SIGTERM/SIGINT."""
        run_id = self._guard("start_run", lambda: self._start(name, params, tags, nested, parent_run_id, job_key),
                             None)
        if run_id is None:
            yield None
            return
        status, reason = "FINISHED", None
        try:
            yield run_id
        except JobInterrupted as e:
            status, reason = "KILLED", f"interrupted by {e.signal_name}"
            raise
        except KeyboardInterrupt:
            status, reason = "KILLED", "interrupted by SIGINT"
            raise
        except BaseException as e:
            status, reason = "FAILED", f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
            raise
        finally:
            self._end(run_id, status, reason)

    def _start(self, name: str, params: Mapping[str, Any] | None, tags: Mapping[str, Any] | None, nested: bool,
               parent_run_id: str | None, job_key: str | None) -> str:
        mlflow = self.mlflow
        child = nested or parent_run_id is not None
        if job_key and not child:
            self.close_stale_runs(job_key)
        base = {JOB_ID_TAG: self.job_id, GIT_TAG: git_commit() or "unknown", HOST_TAG: socket.gethostname(),
                PID_TAG: os.getpid(), PID_START_TAG: process_start(os.getpid())}
        if job_key:
            base[JOB_KEY_TAG] = job_key
        sid = submission_id()
        if sid:
            base[SUBMISSION_TAG] = sid
        inherited = {k: v for k, v in self._job_tags.items() if k in INHERITED_TAGS} if child else {}
        all_tags = {k: str(v) for k, v in {**base, **inherited, **(tags or {})}.items()}
        kwargs: dict[str, Any] = {"parent_run_id": parent_run_id} if parent_run_id else {"nested": nested}
        r = mlflow.start_run(run_name=name, tags=all_tags, **kwargs)
        if not child:
            self._set_job(dict(all_tags), r.info.run_id)
        if params:
            self.log_params(params)
        return r.info.run_id

    def _end(self, run_id: str, status: str, reason: str | None) -> None:
        """End the active run ``run_id`` with ``status``; after a tracking failure only MLflow's run stack is
        unwound (the store is not touched again)."""
        import mlflow

        if not self.enabled:
            with contextlib.suppress(Exception), _quiet_store_errors():
                active = mlflow.active_run()
                if active is not None and active.info.run_id == run_id:
                    mlflow.end_run(status)
            return

        def end() -> None:
            if reason:
                self.mlflow.MlflowClient(tracking_uri=self.tracking_uri).set_tag(run_id, END_REASON_TAG, reason)
            active = self.mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                self.mlflow.end_run(status)
            else:
                self.mlflow.MlflowClient(tracking_uri=self.tracking_uri).set_terminated(run_id, status)

        self._guard("end_run", end, None)
        if not self.enabled:  # ending failed: leave no run of ours on MLflow's stack
            self._end(run_id, status, None)

    def close_stale_runs(self, job_key: str) -> list[str]:
        """Mark KILLED the RUNNING runs of ``job_key`` whose process on this host is gone; returns their ids.

        Why: a process killed without a chance to end its runs (SIGKILL, the OOM killer) leaves them
        RUNNING forever. Only this host's runs are judged (a pid means nothing elsewhere); a pid that is
        alive but started at another time belongs to another process (pid reuse)."""
        client = self.mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            return []
        host = socket.gethostname()
        stale = client.search_runs([exp.experiment_id], filter_string=(
            f"tags.`{JOB_KEY_TAG}` = '{job_key}' and attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'"))
        closed = []
        for run in stale:
            tags = run.data.tags
            pid = int(tags.get(PID_TAG, "0") or 0)
            if pid and process_alive(pid, tags.get(PID_START_TAG)):
                continue
            reason = (f"process {pid} on {host} ended without closing this run (SIGKILL, out of memory or a lost "
                      f"node); found by job {self.job_id}")
            children = client.search_runs([exp.experiment_id], filter_string=(
                f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'RUNNING'"))
            for r in [*children, run]:
                client.set_tag(r.info.run_id, END_REASON_TAG, reason)
                client.set_terminated(r.info.run_id, "KILLED")
                closed.append(r.info.run_id)
        if closed:
            log.warning("marked %d run(s) of this job KILLED that a dead process left RUNNING: %s", len(closed),
                        ", ".join(closed))
        return closed

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = list(flatten(params).items())

        def log() -> None:
            for i in range(0, len(items), 90):
                self.mlflow.log_params(dict(items[i : i + 90]))

        self._guard("log_params", log, None)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        if clean:
            self._guard("log_metrics", lambda: self.mlflow.log_metrics(clean, step=step), None)

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

        def log() -> None:
            run_id = self.mlflow.active_run().info.run_id
            client = self.client()
            for i in range(0, len(metrics), 900):
                client.log_batch(run_id, metrics=metrics[i : i + 900])

        self._guard("log_batch", log, None)

    def client(self) -> Any:
        """An ``MlflowClient`` on this tracker's URI."""
        return self.mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    def active_run_id(self) -> str | None:
        def get() -> str | None:
            run = self.mlflow.active_run()
            return run.info.run_id if run else None

        return self._guard("active_run", get, None)

    def run_params(self, run_id: str | None = None) -> dict[str, str]:
        """Params already logged on a run (the active one by default): MLflow params cannot change."""
        run_id = run_id or self.active_run_id()
        if run_id is None:
            return {}
        return self._guard("get_run", lambda: dict(self.client().get_run(run_id).data.params), {})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._guard("log_text", lambda: self.mlflow.log_text(text, artifact_file), None)

    def log_dict(self, d: Any, artifact_file: str) -> None:
        self._guard("log_dict", lambda: self.mlflow.log_dict(d, artifact_file), None)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        self._guard("log_figure", lambda: self.mlflow.log_figure(fig, artifact_file), None)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """Any file content (a PNG rendered once and reused, a parquet table …)."""

        def log() -> None:
            with tmp_artifact_dir() as d:
                path = Path(d) / Path(artifact_file).name
                path.write_bytes(data)
                parent = str(Path(artifact_file).parent)
                self.mlflow.log_artifact(str(path), None if parent in ("", ".") else parent)

        self._guard("log_artifact", log, None)

    def log_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        self._guard("log_table", lambda: self.mlflow.log_table(data=dict(data), artifact_file=artifact_file), None)

    def log_artifact_dir(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._guard("log_artifacts", lambda: self.mlflow.log_artifacts(str(path), artifact_path), None)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        clean = {k: str(v) for k, v in tags.items()}

        def log() -> None:
            self.mlflow.set_tags(clean)
            active = self.mlflow.active_run()
            if self._job_run_id is not None and active is not None and active.info.run_id == self._job_run_id:
                self._set_job({**self._job_tags, **clean}, self._job_run_id)  # trials inherit e.g. the checksum

        self._guard("set_tags", log, None)

    def describe(self, run_id: str | None) -> str:
        """Where to find a run, for the terminal."""
        if run_id is None or not self.enabled:
            return f"tracking failed ({self.failure})" if self.failure else "tracking disabled"
        exp = self._guard("get_experiment", lambda: self.mlflow.get_experiment_by_name(self.experiment), None)
        if exp is None:
            return f"tracking failed ({self.failure})" if self.failure else f"{self.tracking_uri} · run {run_id}"
        where = f"{self.tracking_uri} · experiment {self.experiment!r} (id {exp.experiment_id}) · run {run_id}"
        if self.tracking_uri.startswith("http"):
            where += f"\n  {self.tracking_uri.rstrip('/')}/#/experiments/{exp.experiment_id}/runs/{run_id}"
        else:
            where += f"\n  view with: mlflow ui --backend-store-uri {self.tracking_uri}"
        return where


def tmp_artifact_dir() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="blockprune-artifacts-")


@contextlib.contextmanager
def _quiet_store_errors() -> Iterator[None]:
    """MLflow logs a sqlite error with its whole traceback before raising it; the tracker reports it once.

    A filter of this call's own (added and removed), not a level change: calls in other threads cannot
    leave the logger silenced."""
    logger = logging.getLogger("mlflow.store.db.utils")
    drop = logging.Filter("\0")  # matches no logger name: drops every record while installed
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _finite(v: Any) -> bool:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return f == f and f not in (float("inf"), float("-inf"))
