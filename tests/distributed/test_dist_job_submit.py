"""``ray start --head`` on loopback, ``ray job submit --working-dir .`` of a 2-job sweep, ``ray stop``.

Two models (smollm2-135m and gemma3-270m, both real, on lee-news): two captures, two MLflow
parent runs with a child run per trial, all tagged with the submission id and the Ray job id. Then
``python -m blockprune.jobs.calibrate`` through the same path (reusing the sweep's store), and a
bad spec, whose job must end FAILED.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dist_helpers import require_private_netns

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
EXCLUDES = [".venv", ".git", "*.db", "mlruns", "mlartifacts", "benchmarks/results", "*.egg-info", "__pycache__",
            ".pytest_cache", ".ruff_cache", "runs", "outputs"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes(marker: str) -> list[str]:
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if marker in cmd:
            out.append(f"{p.info['pid']}: {cmd[:120]}")
    return out


@pytest.fixture
def ray_head() -> Iterator[tuple[int, Path, dict[str, str]]]:
    """A head node started with the ``ray`` CLI on 127.0.0.1, stopped with ``ray stop``.

    Token authentication on, with a token of this test only (never ``~/.ray/auth_token``).
    """
    require_private_netns()
    import ray

    if ray.is_initialized():
        ray.shutdown()
    temp = Path(tempfile.mkdtemp(prefix="bpray-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    dash = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={_free_port()}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true", "--num-cpus=2",
           f"--temp-dir={temp}", "--disable-usage-stats"]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert _ray_processes(str(temp)), "ray start left no process behind?"
        yield dash, temp, env
    finally:
        t0 = time.monotonic()
        stop = subprocess.run([RAY, "stop", "--grace-period", "15"], env=env, capture_output=True, text=True,
                              timeout=180)
        print(f"ray stop took {time.monotonic() - t0:.1f} s")
        left = _ray_processes(str(temp))
        shutil.rmtree(temp, ignore_errors=True)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        assert not left, f"ray stop left processes running: {left}"


def _spec(path: Path) -> Path:
    spec = {
        "name": "submit-test",
        "models": ["smollm2-135m", "gemma3-270m"],
        "calibration": [{"corpus": "lee-news", "n_samples": 4, "seq_len": 64}],
        "capture": {"sample_rows": 256, "store_dtype": "float32", "batch_size": 2},
        "methods": ["shortgpt", "mi_fbs"],
        "estimators": ["mi.ksg"],
        "n_prune": 4,
        "evaluation": {"windows": 2, "batch_size": 2},
        "placement": {"num_cpus": 0.5},
        "scoring": {"num_cpus": 1},
    }
    path.write_text(json.dumps(spec))
    return path


def test_sweep_runs_under_ray_job_submit(ray_head, tmp_path) -> None:
    dash, _, env = ray_head
    address = f"http://127.0.0.1:{dash}"
    submission = f"blockprune-test-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "mlflow.db"
    runtime_env = {"excludes": EXCLUDES, "env_vars": {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                                                      "DO_NOT_TRACK": "true"}}
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--submission-id", submission, "--",
           sys.executable, "-m", "blockprune.jobs.sweep", "--spec", str(_spec(tmp_path / "spec.json")),
           "--tracking-uri", f"sqlite:///{db}", "--experiment", "submit-test", "--store-uri", str(tmp_path / "stores"),
           "--summary-json", str(tmp_path / "summary.json")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540, cwd=REPO)
    logs = done.stdout[-6000:] + done.stderr[-3000:]
    probe = ("import sys; from ray.job_submission import JobSubmissionClient; "
             "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]))")
    status = subprocess.run([sys.executable, "-c", probe, address, submission], env=env, capture_output=True,
                            text=True, timeout=60)
    assert status.stdout.strip().endswith("SUCCEEDED"), logs + status.stdout + status.stderr
    assert done.returncode == 0, logs
    assert "summary" in done.stdout and "SUCCEEDED" in done.stdout

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is True
    assert {r["job"].split(":")[0] for r in summary["rows"]} == {"smollm2-135m@lee-news", "gemma3-270m@lee-news"}

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["submit-test"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("blockprune.kind") == "job"]
    children = [r for r in runs if r.data.tags.get("blockprune.kind") == "trial"]
    assert len(parents) == 2 and len(children) == 4
    for r in parents + children:
        assert r.data.tags["ray.submission_id"] == submission
        assert r.data.tags["engine.job_id"] and r.data.tags["blockprune.engine"] == "ray"
        assert r.data.tags["blockprune.sweep"] == "submit-test"
    assert {r.data.tags["store_reused"] for r in parents} == {"False"}
    assert len(list((tmp_path / "stores").glob("*/manifest.json"))) == 2
    assert {r.data.tags["model"] for r in parents} == {"smollm2-135m", "gemma3-270m"}

    # the single-model entry point under the same submission path: reuses the sweep's lee-news store
    calibrate = [sys.executable, "-m", "blockprune.jobs.calibrate", "--model", "smollm2-135m", "--corpus", "lee-news",
                 "--method", "shortgpt", "--prune", "4", "--n-samples", "4", "--seq-len", "64", "--sample-rows", "256",
                 "--store-dtype", "float32", "--batch-size", "2", "--eval-windows", "2", "--quiet",
                 "--store-root", str(tmp_path / "stores"), "--tracking-uri", f"sqlite:///{db}",
                 "--experiment", "submit-test-calibrate"]
    one = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--runtime-env-json",
                          json.dumps(runtime_env), "--", *calibrate], env=env, capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert one.returncode == 0, one.stdout[-4000:] + one.stderr[-2000:]
    assert '"blocks": [14, 17, 25, 26]' in one.stdout and "reused" in one.stdout
    assert len(list((tmp_path / "stores").glob("*/manifest.json"))) == 2  # no new capture

    # exit code 0 only on success: a bad spec makes the job FAILED (and `ray job submit` exit non-zero)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": ["gpt-17"], "methods": ["shortgpt"]}))
    failed = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", str(REPO),
                             "--runtime-env-json", json.dumps(runtime_env), "--submission-id", submission + "-bad", "--",
                             sys.executable, "-m", "blockprune.jobs.sweep", "--spec", str(bad)],
                            env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    status = subprocess.run([sys.executable, "-c", probe, address, submission + "-bad"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.stdout.strip().endswith("FAILED"), failed.stdout[-3000:] + status.stdout + status.stderr
    assert failed.returncode != 0 and "unknown model 'gpt-17'" in failed.stdout + failed.stderr
