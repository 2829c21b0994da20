"""Sweep specs: parsing, the method × estimator grid, and clear errors for bad input before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dist_helpers import require_private_netns

from blockprune.jobs.sweep import (
    SUMMARY_COLUMNS,
    SpecError,
    compatible_estimators,
    format_table,
    main,
    parse_spec,
    validate_spec,
)

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "name": "t",
    "models": ["smollm2-135m"],
    "calibration": {"corpus": "lee-news", "n_samples": 4, "seq_len": 64},
    "capture": {"sample_rows": 256, "store_dtype": "float32", "batch_size": 2},
    "methods": ["shortgpt", "entrodrop", "mi_fbs"],
    "estimators": ["entropy.knn", "mi.ksg"],
    "n_prune": [4],
    "evaluation": {"windows": 2},
}


def _write(tmp_path: Path, spec: dict, name: str = "spec.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.unit
def test_grid_pairs_each_method_with_the_estimators_it_can_use() -> None:
    spec = parse_spec({**BASE, "estimators": ["entropy.knn", "entropy.bucket", "mi.ksg"],
                       "estimator_params": {"mi.ksg": {"k": 5}}, "n_prune": [2, 4]})
    names = [t.name for t in spec.trials]
    assert names == ["shortgpt/layer/k=2", "shortgpt/layer/k=4",
                     "entrodrop/entropy.knn/layer/k=2", "entrodrop/entropy.knn/layer/k=4",
                     "entrodrop/entropy.bucket/layer/k=2", "entrodrop/entropy.bucket/layer/k=4",
                     "mi_fbs/mi.ksg/layer/k=2", "mi_fbs/mi.ksg/layer/k=4"]
    assert spec.trials[-1].estimator_params == {"k": 5}
    assert compatible_estimators("mi_greedy", ["entropy.knn"]) == ["mi.perdim"]  # default when none fits
    assert compatible_estimators("reverse", ["mi.ksg"]) == [None]
    assert compatible_estimators("angular", []) == ["angular"]


@pytest.mark.unit
def test_jobs_are_models_times_calibrations_with_placement_per_model() -> None:
    spec = parse_spec({**BASE,
                       "models": ["smollm2-135m", {"name": "gemma3-270m", "num_gpus": 2, "dtype": "bfloat16"}],
                       "calibration": [{"corpus": "lee-news", "n_samples": 4, "seq_len": 64},
                                       {"corpus": "wikipedia", "n_samples": 8, "seq_len": 128, "seed": 3,
                                        "capture": {"sample_rows": 512}}],
                       "placement": {"num_cpus": 2, "replicas": 2}, "trials": [{"method": "reverse", "n_prune": 3}]})
    jobs = spec.jobs()
    assert [name for name, _, _ in jobs] == [
        "smollm2-135m@lee-news:4x64:s0", "smollm2-135m@wikipedia:8x128:s3",
        "gemma3-270m@lee-news:4x64:s0", "gemma3-270m@wikipedia:8x128:s3"]
    _, job, model = jobs[3]
    assert job.dtype == "bfloat16" and model.placement.num_gpus == 2 and model.placement.replicas == 2
    assert job.capture.sample_rows == 512 and job.capture.seed == 3 and job.capture.batch_size == 2
    assert jobs[0][2].placement.num_gpus is None and jobs[0][2].placement.num_cpus == 2
    assert job.trials[-1].method == "reverse" and len(job.trials) == 4


@pytest.mark.unit
@pytest.mark.parametrize(("patch", "message"), [
    ({"modles": ["x"]}, r"unknown key\(s\) \['modles'\]"),
    ({"models": []}, "lists no models"),
    ({"methods": [], "trials": []}, "no trials"),
    ({"models": [{"name": "smollm2-135m", "num_gpus": "two"}]}, "num_gpus must be an integer or 'auto'"),
    ({"calibration": {"corpus": "lee-news", "n_samples": 0, "seq_len": 64}}, "n_samples >= 1"),
    ({"trials": [{"method": "shortgpt", "prune": 4}]}, r"trials\[0\]"),
    ({"placement": {"replicas": 0}}, "replicas must be >= 1"),
])
def test_malformed_specs_are_refused(patch: dict, message: str) -> None:
    with pytest.raises((SpecError, ValueError), match=message):
        parse_spec({**BASE, **patch})


@pytest.mark.unit
@pytest.mark.parametrize(("patch", "message"), [
    ({"models": ["gpt-17"]}, "unknown model 'gpt-17'.*bundled models: gemma3-270m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, smollm2-135m"),
    ({"estimators": ["mi.kgs"], "methods": ["mi_fbs"]}, "unknown estimator 'mi.kgs'.*known:.*mi.ksg"),
    ({"methods": ["shortgtp"]}, "unknown selection method 'shortgtp'.*known:.*shortgpt"),
    ({"calibration": {"corpus": "wikipdia", "n_samples": 4, "seq_len": 64}}, "unknown corpus 'wikipdia'"),
    ({"n_prune": [30]}, "smollm2-135m \\(30 layers\\).*between 1 and 29"),
])
def test_specs_naming_unknown_things_fail_validation_fast(patch: dict, message: str) -> None:
    spec = parse_spec({**BASE, **patch})
    t0 = time.perf_counter()
    with pytest.raises((SpecError, KeyError, ValueError), match=message):
        validate_spec(spec)
    assert time.perf_counter() - t0 < 20


@pytest.mark.unit
def test_cli_reports_bad_specs_with_exit_code_2(tmp_path, capsys) -> None:
    bad = _write(tmp_path, {**BASE, "models": ["gpt-17"]})
    assert main(["--spec", str(bad), "--dry-run"]) == 2
    assert "blockprune: error: unknown model 'gpt-17'" in capsys.readouterr().err
    assert main(["--spec", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    good = _write(tmp_path, BASE, "good.yaml")
    assert main(["--spec", str(good), "--dry-run"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["job"] == "smollm2-135m@lee-news:4x64:s0" and len(lines[0]["trials"]) == 3


@pytest.mark.integration
def test_cli_unreachable_address_is_a_clear_error_within_seconds(tmp_path) -> None:
    """The real command line, as ``ray job submit`` or a user would run it."""
    require_private_netns()  # the probe must not reach anything outside
    spec = _write(tmp_path, BASE)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "blockprune.jobs.sweep", "--spec", str(spec), "--address",
                        "10.255.255.1:6379", "--no-tracking", "--quiet"], capture_output=True, text=True, timeout=120,
                       cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""})
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cannot reach a Ray cluster at 10.255.255.1:6379" in r.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s (Python start-up and spec validation included)"


@pytest.mark.integration
def test_cli_gpu_request_beyond_any_node_is_refused_before_work(tmp_path, capsys) -> None:
    require_private_netns()
    import ray

    if ray.is_initialized():
        ray.shutdown()
    spec = _write(tmp_path, {**BASE, "placement": {"num_gpus": 4}})
    t0 = time.monotonic()
    code = main(["--spec", str(spec), "--num-cpus", "2", "--no-tracking", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "needs 4 GPU(s) on one node, but the largest node has 0" in err
    assert time.monotonic() - t0 < 60
    assert not ray.is_initialized()


@pytest.mark.unit
def test_summary_table_lines_up() -> None:
    rows = [{"job": "a", "status": "SUCCEEDED", "trial": "shortgpt/layer/k=4"}, {"job": "bb", "status": "FAILED"}]
    table = format_table(rows, SUMMARY_COLUMNS).splitlines()
    assert table[0].startswith("job  status") and table[3].startswith("bb   FAILED")
    assert table[0].index("trial") == table[2].index("shortgpt")
