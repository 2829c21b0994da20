"""A job logged to a real sqlite store: run structure, params, tags, metric curves, tables, figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tracking_helpers import (
    N_BLOCKS,
    LoggedJob,
    assert_job_logged,
    list_artifacts,
    log_job,
    make_plan,
    read_artifact,
)

from blockprune.pipeline.config import TrialSpec
from blockprune.tracking.tracker import Tracker

pytestmark = pytest.mark.integration

# MLflow bookkeeping tags that are per run by nature.
PER_RUN_TAGS = {"mlflow.runName", "blockprune.blocks", "blockprune.plan", "mlflow.loggedArtifacts"}


def test_three_trial_job_in_sqlite(sqlite_job: LoggedJob, tmp_path: Path) -> None:
    assert_job_logged(sqlite_job.uri, sqlite_job.experiment, sqlite_job.parent_id, sqlite_job.results, tmp_path)
    # Artifacts live beside the database, wherever the process happened to run.
    assert len(list((sqlite_job.root / "mlruns").rglob("plan.json"))) == 3


def test_samples_and_eval_artifacts_are_readable(sqlite_job: LoggedJob, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sqlite_job.uri)
    rid = sqlite_job.results[0].run_id
    samples = json.loads(read_artifact(client, rid, "samples/generation.json", tmp_path))
    assert samples[0]["prompt"] == "The capital of France is"
    assert "The capital of France is▌ Paris." in read_artifact(client, rid, "samples/generation.txt", tmp_path).decode()
    tasks = json.loads(read_artifact(client, rid, "eval/tasks.json", tmp_path))
    assert set(tasks) == {"piqa", "arc_easy"} and "acc_norm" in tasks["piqa"]
    runs = json.loads(read_artifact(client, sqlite_job.results[2].run_id, "tables/run_scores.json", tmp_path))
    assert runs["columns"] == ["run", "start", "length", "mi", "chosen"]
    assert len(runs["data"]) == len(sqlite_job.results[2].plan.run_scores)
    trials = json.loads(read_artifact(client, sqlite_job.parent_id, "tables/trials.json", tmp_path))
    cols = trials["columns"]
    assert len(trials["data"]) == 3 and "ppl_pruned" in cols and "blocks" in cols
    ppl = {row[cols.index("run_id")]: row[cols.index("ppl_pruned")] for row in trials["data"]}
    assert ppl == pytest.approx({r.run_id: r.metrics["ppl_pruned"] for r in sqlite_job.results}, rel=1e-9)


def test_trials_differing_only_in_estimator_differ_only_in_estimator_params(sqlite_job: LoggedJob) -> None:
    """Same method/k/calibration, two entropy estimators: every other param and tag is identical."""
    from mlflow import MlflowClient

    trials = [TrialSpec("entrodrop", 3, estimator="entropy.knn", estimator_params={"k": 3}),
              TrialSpec("entrodrop", 3, estimator="entropy.renyi", estimator_params={"alpha": 2.0})]
    tracker = Tracker(sqlite_job.uri, "estimator-pair")
    _, results = log_job(tracker, trials, figures=False, extras=False)
    client = MlflowClient(tracking_uri=sqlite_job.uri)
    a, b = (client.get_run(r.run_id).data for r in results)
    diff = {k for k in a.params.keys() | b.params.keys() if a.params.get(k) != b.params.get(k)}
    assert "estimator" in diff
    assert diff <= {"estimator"} | {k for k in diff if k.startswith("estimator_params.")}
    assert diff == {"estimator", "estimator_params.k", "estimator_params.alpha"}
    tag_diff = {k for k in a.tags.keys() | b.tags.keys() if a.tags.get(k) != b.tags.get(k)} - PER_RUN_TAGS
    assert tag_diff == set()


def test_sweep_summary_on_the_parent(sqlite_job: LoggedJob, tmp_path: Path) -> None:
    """Several block counts: perplexity-vs-k curves (metric and figure) and agreement per k."""
    from mlflow import MlflowClient

    trials = [TrialSpec(m, k) for m in ("shortgpt", "reverse") for k in (2, 3)]
    tracker = Tracker(sqlite_job.uri, "sweep")
    parent_id, results = log_job(tracker, trials, extras=False)
    client = MlflowClient(tracking_uri=sqlite_job.uri)
    arts = list_artifacts(client, parent_id)
    assert {"figures/ppl_vs_pruned.png", "figures/dropped_blocks.png", "tables/trials.json",
            "agreement/smollm2-135m_layer_k2.json", "agreement/smollm2-135m_layer_k3.json"} <= arts
    hist = client.get_metric_history(parent_id, "ppl_pruned.shortgpt/layer")
    assert sorted((m.step, m.value) for m in hist) == sorted(
        (r.plan.n_prune, r.metrics["ppl_pruned"]) for r in results if r.trial.method == "shortgpt")
    agree = json.loads(read_artifact(client, parent_id, "agreement/smollm2-135m_layer_k2.json", tmp_path))
    assert agree["labels"] == ["shortgpt", "reverse"]
    blocks = [set(r.plan.blocks) for r in results if r.plan.n_prune == 2]
    assert agree["jaccard"][0][1] == pytest.approx(len(blocks[0] & blocks[1]) / len(blocks[0] | blocks[1]), abs=1e-4)


@pytest.mark.unit
def test_figures_from_plans() -> None:
    """Figure builders on real plans: entropy stages, run heatmap geometry, Jaccard."""
    import numpy as np

    from blockprune.tracking import figures as F

    ent = make_plan(TrialSpec("entrodrop", 3, estimator="entropy.knn"))
    series = F.entropy_series(ent)
    assert series["h"][0] == list(range(N_BLOCKS + 1))
    assert F.to_png(F.entropy_figure(ent))[:4] == b"\x89PNG"
    mi = make_plan(TrialSpec("mi_fbs", 3, estimator="mi.ksg"))
    m = F.run_score_matrix(mi)
    for key, v in mi.run_scores.items():
        s, e = map(int, key.split("-"))
        assert m[e - s, s] == v
    assert np.isfinite(m).sum() == len(mi.run_scores)
    assert F.to_png(F.run_heatmap_figure(mi, "mi"))[:4] == b"\x89PNG"
    assert F.jaccard([1, 2, 3], [2, 3, 4]) == 0.5 and F.jaccard([], []) == 1.0
    np.testing.assert_allclose(F.agreement_matrix([[1, 2], [2, 3], [1, 2]]), [[1, 1 / 3, 1], [1 / 3, 1, 1 / 3],
                                                                               [1, 1 / 3, 1]])


def test_child_run_from_another_process_joins_the_job(sqlite_job: LoggedJob) -> None:
    """A pickled tracker (what a Ray actor receives) makes children of the driver's parent run."""
    import pickle

    from mlflow import MlflowClient

    driver = Tracker(sqlite_job.uri, "actors")
    with driver.run("job", tags={"blockprune.kind": "job", "model": "m"}) as parent_id:
        driver.set_tags({"store_checksum": "abc"})
        shipped = pickle.dumps(driver)
    actor = pickle.loads(shipped)
    with actor.run("trial", parent_run_id=parent_id, tags={"blockprune.kind": "trial"}) as child_id:
        actor.log_metrics({"ppl_pruned": 1.5})
    tags = MlflowClient(tracking_uri=sqlite_job.uri).get_run(child_id).data.tags
    assert tags["mlflow.parentRunId"] == parent_id
    assert tags["blockprune.job_id"] == driver.job_id
    assert (tags["model"], tags["store_checksum"]) == ("m", "abc")


def test_concurrent_jobs_on_one_tracker_keep_their_own_tags(sqlite_job: LoggedJob) -> None:
    """A sweep runs jobs in threads on one tracker: each trial inherits its own job's tags."""
    import threading

    from mlflow import MlflowClient

    tracker = Tracker(sqlite_job.uri, "threads")
    tracker.check()
    barrier = threading.Barrier(2)
    children: dict[str, str] = {}

    def job(model: str) -> None:
        with tracker.run(model, tags={"blockprune.kind": "job", "model": model}):
            tracker.set_tags({"store_checksum": f"store-{model}"})
            barrier.wait(timeout=30)  # both parents open before either child starts
            with tracker.run("trial", nested=True, tags={"blockprune.kind": "trial"}) as rid:
                children[model] = rid

    threads = [threading.Thread(target=job, args=(m,)) for m in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    client = MlflowClient(tracking_uri=sqlite_job.uri)
    for model, rid in children.items():
        tags = client.get_run(rid).data.tags
        assert (tags["model"], tags["store_checksum"]) == (model, f"store-{model}")
