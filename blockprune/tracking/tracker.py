"""MLflow logging for jobs (parent runs) and trials (child runs).

Defaults: no configuration → ``sqlite:///mlflow.db`` in the working directory;
``MLFLOW_TRACKING_URI`` or ``tracking_uri`` for a server; ``enabled=False`` turns logging off
(every method becomes a no-op, so callers never branch). Telemetry is off unless the user
turned it on (:func:`blockprune.env.apply_env_defaults` runs before mlflow is imported).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from blockprune.env import apply_env_defaults

apply_env_defaults()


class TrackingUnavailableError(RuntimeError):
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


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracker:
    """Thin layer over MLflow's fluent API that knows blockprune's run structure."""

    def __init__(self, tracking_uri: str | None = None, experiment: str = "blockprune", enabled: bool = True) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self._mlflow: Any = None

    @property
    def mlflow(self) -> Any:
        if self._mlflow is None:
            import mlflow

            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_experiment(self.experiment)
            self._mlflow = mlflow
        return self._mlflow

    def check(self, timeout: float = 5.0) -> None:
        """Fail fast (before any capture) when a tracking server is unreachable."""
        if not self.enabled:
            return
        uri = self.tracking_uri
        if uri.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                    if r.status != 200:
                        raise TrackingUnavailableError(f"MLflow server {uri} answered {r.status} on /health")
            except (urllib.error.URLError, OSError) as e:
                raise TrackingUnavailableError(
                    f"cannot reach the MLflow tracking server at {uri} ({e}); start it, fix --tracking-uri / "
                    "MLFLOW_TRACKING_URI, or pass --no-tracking"
                ) from None
        _ = self.mlflow  # creates the sqlite store / experiment now, not after capture

    @contextlib.contextmanager
    def run(self, name: str, *, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
            nested: bool = False) -> Iterator[str | None]:
        """A run (a job's parent run, or a nested trial run); yields the run id."""
        if not self.enabled:
            yield None
            return
        mlflow = self.mlflow
        all_tags = {"blockprune.git_commit": git_commit() or "unknown", **(tags or {})}
        if os.environ.get("RAY_JOB_SUBMISSION_ID"):
            all_tags["ray.submission_id"] = os.environ["RAY_JOB_SUBMISSION_ID"]
        with mlflow.start_run(run_name=name, nested=nested, tags={k: str(v) for k, v in all_tags.items()}) as r:
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

    def log_series(self, name: str, values: Sequence[float]) -> None:
        """One metric per block: ``step`` = block index, so MLflow plots it as a curve."""
        if not self.enabled:
            return
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        run_id = self.mlflow.active_run().info.run_id
        metrics = [Metric(name, float(v), ts, i) for i, v in enumerate(values)]
        client = self.mlflow.MlflowClient()
        for i in range(0, len(metrics), 900):
            client.log_batch(run_id, metrics=metrics[i : i + 900])

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.mlflow.log_text(text, artifact_file)

    def log_dict(self, d: Any, artifact_file: str) -> None:
        if self.enabled:
            self.mlflow.log_dict(d, artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        if self.enabled:
            self.mlflow.log_figure(fig, artifact_file)

    def log_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        if self.enabled:
            self.mlflow.log_table(data=dict(data), artifact_file=artifact_file)

    def log_artifact_dir(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.mlflow.log_artifacts(str(path), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

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
