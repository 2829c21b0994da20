"""``calibrate --config job.yaml``: the shared schema, with command-line flags laid over it."""

from __future__ import annotations

import pytest
import yaml

from blockprune.jobs.calibrate import build_parser, job_from_args, tracking_from_args
from blockprune.pipeline.config import SpecError, TrialSpec, parse_job

JOB = {
    "model": "smollm2-135m",
    "calibration": {"corpus": "lee-news", "n_samples": 8, "seq_len": 64, "seed": 3},
    "capture": {"sample_rows": 256, "store_dtype": "float32"},
    "methods": ["shortgpt", "mi_fbs"], "estimators": ["mi.ksg"], "estimator_params": {"mi.ksg": {"k": 5}},
    "n_prune": [2, 4],
    "evaluation": {"windows": 2, "tasks": ["piqa"], "limit": 10},
    "tracking": {"experiment": "from-file"},
}


def _job(tmp_path, *flags):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(JOB))
    args = build_parser().parse_args(["--config", str(path), *flags])
    return job_from_args(args), tracking_from_args(args)


def test_a_job_file_alone(tmp_path) -> None:
    job, tracking = _job(tmp_path)
    assert job.model == "smollm2-135m" and job.calibration.corpus == "lee-news" and job.calibration.seed == 3
    assert job.capture.sample_rows == 256 and job.capture.seed == 3  # the capture seed follows the calibration's
    assert [t.name for t in job.trials] == ["shortgpt/layer/k=2", "shortgpt/layer/k=4", "mi_fbs/mi.ksg/layer/k=2",
                                            "mi_fbs/mi.ksg/layer/k=4"]
    assert job.trials[2].estimator_params == {"k": 5}
    assert job.evaluation.tasks == ("piqa",) and job.evaluation.limit == 10
    assert tracking.experiment == "from-file" and tracking.enabled


def test_flags_override_the_file(tmp_path) -> None:
    job, tracking = _job(tmp_path, "--n-samples", "16", "--store-dtype", "float16", "--experiment", "cli",
                         "--no-tracking", "--tasks", "arc_easy,boolq")
    assert job.calibration.n_samples == 16 and job.calibration.corpus == "lee-news"
    assert job.capture.store_dtype == "float16" and job.capture.sample_rows == 256
    assert job.evaluation.tasks == ("arc_easy", "boolq")
    assert tracking.experiment == "cli" and not tracking.enabled
    assert len(job.trials) == 4  # no trial flag: the file's trials stay


def test_a_trial_flag_replaces_the_files_trials(tmp_path) -> None:
    job, _ = _job(tmp_path, "--prune", "6")
    assert job.trials == (TrialSpec("shortgpt", 6),)
    job, _ = _job(tmp_path, "--method", "entrodrop", "--estimator", "entropy.knn", "--prune", "3")
    assert job.trials == (TrialSpec("entrodrop", 3, estimator="entropy.knn"),)


def test_flags_alone_give_the_documented_defaults() -> None:
    job = job_from_args(build_parser().parse_args(["--model", "smollm2-135m"]))
    assert (job.calibration.corpus, job.calibration.n_samples, job.calibration.seq_len) == ("wikipedia", 32, 256)
    assert job.capture.sample_rows == 4096 and job.capture.store_dtype == "float16"
    assert job.trials == (TrialSpec("shortgpt", 4),) and job.evaluation.windows == 16


@pytest.mark.parametrize(("patch", "message"), [
    ({"model": None}, "needs a model"),
    ({"calibration": {"corpus": "lee-news", "n_sample": 8}}, r"unknown key\(s\) \['n_sample'\] in calibration"),
    ({"evaluation": {"windows": 0}}, "windows >= 1"),
    ({"capture": {"store_dtype": "int8"}}, "store_dtype must be float16 or float32"),
    ({"dtype": "float64"}, "dtype must be one of"),
    ({"trials": [{"method": "shortgpt"}], "methods": None}, "trials\\[0\\]"),
    ({"colour": "red"}, r"unknown key\(s\) \['colour'\]"),
])
def test_bad_job_files_name_the_problem(patch, message) -> None:
    d = {k: v for k, v in {**JOB, **patch}.items() if v is not None}
    with pytest.raises(SpecError, match=message):
        parse_job(d, "job.yaml")


def test_a_file_that_is_not_a_mapping(tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match=f"job config {path} must hold a mapping"):
        job_from_args(build_parser().parse_args(["--config", str(path)]))
    with pytest.raises(SpecError, match="does not exist"):
        job_from_args(build_parser().parse_args(["--config", str(tmp_path / "none.yaml")]))


def test_heal_section_and_flag(tmp_path) -> None:
    job, _ = _job(tmp_path)
    assert job.heal is None
    job, _ = _job(tmp_path, "--heal-steps", "20")
    assert job.heal is not None and job.heal.steps == 20 and job.heal.lora.rank == 16
    d = {**JOB, "heal": {"steps": 5, "rank": 4, "corpora": ["lee-news"], "lr": 1e-3}}
    heal = parse_job(d).heal
    assert (heal.steps, heal.lora.rank, heal.corpora, heal.lr) == (5, 4, ("lee-news",), 1e-3)
    with pytest.raises(SpecError, match=r"unknown key\(s\) \['rnak'\] in heal"):
        parse_job({**JOB, "heal": {"rnak": 4}})
    with pytest.raises(SpecError, match="heal: .*steps must be >= 1"):
        parse_job({**JOB, "heal": {"steps": 0}})
