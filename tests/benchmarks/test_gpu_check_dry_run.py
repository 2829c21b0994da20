"""The GPU check starts and runs every section: its CPU dry run, as the GPU machine would launch it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_runs_every_section_without_ray_mlflow_or_lm_eval(tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}  # the script must find the tree by itself
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out),
                           "--workdir", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert set(sections) == {"model", "resident", "checkpoint", "pruned", "streamed", "offload", "knn"}
    failed = {k: v.get("error") or v.get("reason") for k, v in sections.items() if v["status"] != "ok"}
    assert not failed, failed
    assert report["forbidden_imports"] == []
    assert sections["streamed"]["tensors_read_more_than_once"] == 0
    assert sections["streamed"]["max_bi_diff_vs_resident"] < 1e-6
    assert sections["offload"]["max_bi_diff_vs_resident"] < 1e-6
    assert sum(sections["offload"]["layers_per_device"].values()) == 4
    assert sections["knn"]["equal"]
    assert sections["pruned"]["dropped_layers"] == [2]
    assert not list(tmp_path.glob("gpu-check-*")), "the work folder (checkpoint, stores) must be removed"
