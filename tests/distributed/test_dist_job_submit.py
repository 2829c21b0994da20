"""The "On one machine" block of infra/README.md, run as written: ``ray start --head`` on loopback,
``ray job submit --working-dir .`` of the smoke sweep (both bundled models, real), ``ray stop``.

The README's lines are executed by bash (never re-typed here), with these substitutions only: ``--num-cpus=2``
(this machine), a private ``--temp-dir`` for the head (Ray's default /tmp/ray is shared), a throw-away ``$HOME``
(so ``~/.ray/auth_token`` is this test's), and the checkout copied to a scratch folder as ``.`` (so
``$PWD/mlflow.db`` lands there). That ``$HOME`` holds a token before ``ray start``, as it does for anyone
who ran ``ray.init()`` before: Ray 2.60 then turns token authentication on, which broke the old README's
``ray job submit`` (issue #18, case 10).

Then ``python -m blockprune.jobs.calibrate`` through the same path (reusing the sweep's store), and a bad spec,
whose job must end FAILED.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
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


def readme_block() -> list[str]:
    """The commands of infra/README.md's "On one machine" block, continuation lines joined."""
    text = (REPO / "infra" / "README.md").read_text()
    section = text[text.index("## On one machine"):]
    block = section[section.index("```bash") + len("```bash"): section.index("```", section.index("```bash") + 7)]
    commands, current = [], ""
    for line in block.strip().splitlines():
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        commands.append(current)
        current = ""
    return commands


def adapt(command: str, temp: Path) -> str:
    """The listed substitutions, nothing else."""
    if command.startswith("ray start"):
        command = command.replace("--num-cpus=8", "--num-cpus=2") + f" --temp-dir={temp}"
    return command


@pytest.fixture
def readme_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A scratch copy of the checkout, a throw-away $HOME holding an earlier ray.init()'s token, $PATH to this
    environment's python and ray; ``ray stop`` (the README's last line) afterwards, leaving no process."""
    require_private_netns()
    import ray

    if ray.is_initialized():
        ray.shutdown()
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(os.urandom(32).hex())  # as `ray.init()` leaves it
    work = tmp_path / "checkout"
    shutil.copytree(REPO / "blockprune", work / "blockprune", ignore=shutil.ignore_patterns("__pycache__"))
    temp = Path(tempfile.mkdtemp(prefix="bpray-", dir="/tmp"))  # short: Ray's socket paths are length-limited
    env = {**os.environ, "HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "BLOCKPRUNE_CACHE": os.environ.get("BLOCKPRUNE_CACHE", str(Path.home() / ".cache" / "blockprune")),
           "RAY_USAGE_STATS_ENABLED": "0", "BP_WORK": str(work), "BP_TEMP": str(temp)}
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_AUTH_TOKEN", None)
    try:
        yield env
    finally:
        t0 = time.monotonic()
        stop = [c for c in readme_block() if c.startswith("ray stop")]
        done = subprocess.run(["bash", "-c", "export RAY_AUTH_MODE=token; " + stop[0] + " --grace-period 15"],
                              env=env, capture_output=True, text=True, timeout=180, cwd=work)
        print(f"ray stop took {time.monotonic() - t0:.1f} s")
        left = _ray_processes(str(temp))
        shutil.rmtree(temp, ignore_errors=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert not left, f"ray stop left processes running: {left}"


def test_sweep_runs_under_ray_job_submit(readme_env) -> None:
    env = readme_env
    work, temp = Path(env["BP_WORK"]), Path(env["BP_TEMP"])
    commands = readme_block()
    assert [c.split()[0] for c in commands] == ["export", "ray", "ray", "ray", "ray"], commands
    upto_submit = [adapt(c, temp) for c in commands if not c.startswith("ray stop")]
    assert upto_submit[-1].startswith("ray job submit") and upto_submit[2].startswith("ray start")
    done = subprocess.run(["bash", "-ec", "\n".join(upto_submit)], env=env, capture_output=True, text=True,
                          timeout=900, cwd=work)
    logs = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, logs
    assert "summary" in done.stdout and "SUCCEEDED" in done.stdout
    submission = re.search(r"Job '(raysubmit_\w+)' submitted successfully", done.stdout + done.stderr).group(1)
    address = "http://127.0.0.1:8265"
    auth_env = {**env, "RAY_AUTH_MODE": "token"}  # what the README exported for every later ray command
    probe = ("import sys; from ray.job_submission import JobSubmissionClient; "
             "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]))")
    status = subprocess.run([sys.executable, "-c", probe, address, submission], env=auth_env, capture_output=True,
                            text=True, timeout=60)
    assert status.stdout.strip().endswith("SUCCEEDED"), logs + status.stdout + status.stderr
    db = work / "mlflow.db"
    stores = Path(env["HOME"]) / ".cache" / "blockprune" / "stores"

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["blockprune-smoke"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("blockprune.kind") == "job"]
    children = [r for r in runs if r.data.tags.get("blockprune.kind") == "trial"]
    assert len(parents) == 2 and len(children) == 6  # 2 models × shortgpt, entrodrop/knn, mi_fbs/ksg
    for r in parents + children:
        assert r.data.tags["ray.submission_id"] == submission
        assert r.data.tags["engine.job_id"] and r.data.tags["blockprune.engine"] == "ray"
        assert r.data.tags["blockprune.sweep"] == "smoke"
    assert {r.data.tags["store_reused"] for r in parents} == {"False"}
    assert len(list(stores.glob("*/manifest.json"))) == 2
    assert {r.data.tags["model"] for r in parents} == {"smollm2-135m", "gemma3-270m"}

    # the single-model entry point under the same submission path: reuses the sweep's lee-news store
    calibrate = [sys.executable, "-m", "blockprune.jobs.calibrate", "--model", "smollm2-135m", "--corpus", "lee-news",
                 "--method", "shortgpt", "--prune", "4", "--n-samples", "4", "--seq-len", "64", "--sample-rows", "256",
                 "--store-dtype", "float32", "--batch-size", "2", "--eval-windows", "2", "--quiet",
                 "--store-root", str(stores), "--tracking-uri", f"sqlite:///{db}",
                 "--experiment", "submit-test-calibrate"]
    runtime_env = {"excludes": EXCLUDES}
    one = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", str(work), "--runtime-env-json",
                          json.dumps(runtime_env), "--", *calibrate], env=auth_env, capture_output=True, text=True,
                         timeout=300, cwd=work)
    assert one.returncode == 0, one.stdout[-4000:] + one.stderr[-2000:]
    assert '"blocks": [14, 17, 25, 26]' in one.stdout and "reused" in one.stdout
    assert len(list(stores.glob("*/manifest.json"))) == 2  # no new capture

    # exit code 0 only on success: a bad spec makes the job FAILED (and `ray job submit` exit non-zero)
    bad = work / "bad.json"
    bad.write_text(json.dumps({"models": ["gpt-17"], "methods": ["shortgpt"]}))
    failed = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", str(work),
                             "--runtime-env-json", json.dumps(runtime_env), "--submission-id", submission + "-bad", "--",
                             sys.executable, "-m", "blockprune.jobs.sweep", "--spec", str(bad)],
                            env=auth_env, capture_output=True, text=True, timeout=300, cwd=work)
    status = subprocess.run([sys.executable, "-c", probe, address, submission + "-bad"], env=auth_env,
                            capture_output=True, text=True, timeout=60)
    assert status.stdout.strip().endswith("FAILED"), failed.stdout[-3000:] + status.stdout + status.stderr
    assert failed.returncode != 0 and "unknown model 'gpt-17'" in failed.stdout + failed.stderr
