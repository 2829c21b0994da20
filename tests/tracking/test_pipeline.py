"""The real pipeline (SmolLM2-135M, real corpus, real capture) logging to a real sqlite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from tracking_helpers import COMMON_METRICS, TAGS, TRIAL_PARAMS, list_artifacts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

METHODS = ("shortgpt", "reverse", "relative_magnitude")


def test_calibrate_job_in_mlflow_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    from blockprune.jobs import compare
    from blockprune.jobs.calibrate import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--model", "smollm2-135m", "--corpus", "lee-news", "--n-samples", "4", "--seq-len", "64",
            "--sample-rows", "256", "--eval-windows", "2", "--prune", "3", "--tracking-uri", uri,
            "--store-root", str(tmp_path / "stores"), "--quiet"]
    for m in METHODS:
        argv += ["--method", m]
    assert main(argv) == 0
    capsys.readouterr()

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    children = mlflow.search_runs(experiment_names=["blockprune"], filter_string="tags.`blockprune.kind` = 'trial'")
    assert sorted(children["params.method"]) == sorted(METHODS)
    parents = set(children["tags.mlflow.parentRunId"])
    assert len(parents) == 1
    parent_id = parents.pop()
    parent = client.get_run(parent_id)
    assert parent.data.tags["blockprune.kind"] == "job" and "dense.ppl" in parent.data.metrics
    params = []
    for run_id in children["run_id"]:
        run = client.get_run(run_id)
        d = run.data
        assert all(d.tags.get(t) for t in TAGS), run_id
        assert d.tags["blockprune.job_id"] == parent.data.tags["blockprune.job_id"]
        assert d.tags["store_checksum"] == parent.data.tags["store_checksum"]
        assert all(p in d.params for p in TRIAL_PARAMS), set(TRIAL_PARAMS) - set(d.params)
        assert all(m in d.metrics for m in COMMON_METRICS), set(COMMON_METRICS) - set(d.metrics)
        hist = client.get_metric_history(run_id, "score.bi")
        assert sorted(m.step for m in hist) == list(range(30))
        arts = list_artifacts(client, run_id)
        assert {"plan.json", "tables/block_scores.json", "figures/score_bi.png"} <= arts
        if d.params["method"] == "relative_magnitude":
            assert "score.relative_magnitude" in d.metrics and "figures/score_relative_magnitude.png" in arts
        params.append(d.params)
    # Trials that differ only in method differ only in the method param.
    for other in params[1:]:
        assert {k for k in params[0].keys() | other.keys() if params[0].get(k) != other.get(k)} == {"method"}

    assert len(list((tmp_path / "mlruns").rglob("plan.json"))) == 3  # beside the database, not in the cwd
    assert compare.main(["--tracking-uri", uri, "--parent-run", parent_id, "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    for ppl in children["metrics.ppl_pruned"]:
        assert f"{ppl:.3f}" in printed
    assert (tmp_path / "report" / "compare.html").exists()

    assert "tables/trials.json" in list_artifacts(client, parent_id)
