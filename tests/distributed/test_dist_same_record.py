"""One job loop: the same job run locally and on Ray logs the same metric keys, params, tags and artifacts.

Latency and generation samples are switched on, so the record includes everything a job can log.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from dist_helpers import tiny_job

from blockprune.distributed.backend import run_distributed_job
from blockprune.pipeline.config import ActorPlacement, DistributedSettings, ScoringOptions, TrialSpec
from blockprune.pipeline.job import run_job
from blockprune.tracking.tracker import Tracker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# values that name the engine, the run or the time, not the job's result
# (the Ray run reuses the store and scores the local run made, so whether it reused differs too)
ENGINE_TAGS = {"blockprune.engine", "engine.job_id", "mlflow.runName", "blockprune.job_id", "mlflow.parentRunId",
               "store_reused"}


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifacts(client, run_id, f.path) if f.is_dir else {f.path}
    return out


def _record(uri: str, experiment: str) -> dict[str, dict]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    out = {}
    for r in runs:
        kind = r.data.tags["blockprune.kind"]
        name = "job" if kind == "job" else r.data.tags["mlflow.runName"]
        out[name] = {"metrics": set(r.data.metrics), "params": set(r.data.params), "tags": set(r.data.tags),
                     "artifacts": _artifacts(client, r.info.run_id), "values": r.data}
    return out


def test_local_and_ray_runs_log_the_same_record(ray_local, tmp_path) -> None:
    # EntroDrop's default reads a second, per-window store: captured by the actors on the Ray path
    job = replace(tiny_job(tmp_path / "stores", trials=(TrialSpec("mi_fbs", 3, estimator="mi.ksg"),
                                                        TrialSpec("shortgpt", 2, granularity="attention"),
                                                        TrialSpec("entrodrop", 2))))
    job = replace(job, evaluation=replace(job.evaluation, latency=True, samples=True))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_job(job, tracker=Tracker(uri, "local"), progress=False)
    settings = DistributedSettings(ActorPlacement(num_cpus=0.5), ScoringOptions(num_cpus=1))
    run_distributed_job(job, Tracker(uri, "ray"), settings, echo=print)

    local, ray = _record(uri, "local"), _record(uri, "ray")
    assert set(local) == set(ray) == {"job", "mi_fbs/mi.ksg/layer/k=3", "shortgpt/attention/k=2",
                                      "entrodrop/entropy.knn_window/layer/k=2"}
    for name in local:
        for what in ("metrics", "params", "tags", "artifacts"):
            assert local[name][what] == ray[name][what], (name, what, local[name][what] ^ ray[name][what])
    # everything the job logs is there: latency and samples on every trial, the summary on the job
    trial = local["mi_fbs/mi.ksg/layer/k=3"]
    assert {"latency.prefill_tokens_per_s", "pruned.latency.decode_tokens_per_s", "scores_computed"} <= trial["metrics"]
    assert {"eval/latency.json", "plan.json"} <= trial["artifacts"]
    assert {"samples/generation.json", "samples/generation.txt"} <= trial["artifacts"]
    assert any(a.startswith("figures/") for a in local["job"]["artifacts"])
    assert {"dense.latency.prefill_tokens_per_s", "job_seconds", "scoring_batches"} <= local["job"]["metrics"]
    assert {"model_revision", "store_checksum", "blockprune.engine"} <= local["job"]["tags"]
    # and the same numbers, where they do not depend on the engine
    for name in local:
        lv, rv = local[name]["values"], ray[name]["values"]
        assert {k: v for k, v in lv.tags.items() if k not in ENGINE_TAGS} == \
            {k: v for k, v in rv.tags.items() if k not in ENGINE_TAGS}
        for key in ("ppl_pruned", "ppl_dense", "exact_scores", "dense.ppl"):
            if key in lv.metrics:
                assert rv.metrics[key] == pytest.approx(lv.metrics[key], rel=1e-5), (name, key)
    assert local["job"]["values"].tags["blockprune.engine"] == "local"
    assert ray["job"]["values"].tags["blockprune.engine"] == "ray"
