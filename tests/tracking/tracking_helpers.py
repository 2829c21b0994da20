"""Synthetic-but-structurally-real trials: real TrialSpecs, real selection, real PrunePlans, real Tracker.

Why: a model forward on the shared CPU takes minutes; what tracking must get right is the run
structure (one parent, a child per trial), names and artifacts. The scores come from fixed curves
and a DPI-consistent run-MI table, the selection from the real algorithms, and the runs are
logged exactly the way ``blockprune.jobs.runner`` logs them (same params, tags and metric names),
then through the real :func:`log_trial` / :func:`log_job_summary`.
"""

from __future__ import annotations

import hashlib
import math
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from blockprune.calibration.capture import CaptureSettings
from blockprune.pipeline.config import EvalSettings, TrialSpec
from blockprune.selection import METHODS, select
from blockprune.selection.plan import CalibrationSettings, PrunePlan, parse_run_key, run_key
from blockprune.selection.synthetic import TableScorer, dpi_run_table
from blockprune.tracking.artifacts import log_job_summary, log_trial
from blockprune.tracking.tracker import Tracker

N_BLOCKS = 12
MODEL = "smollm2-135m"
REVISION = "gguf-q4_1-test"
STORE = "c0ffee" * 4
DENSE_PPL = 21.7
DENSE_PARAMS = 134_515_008
PARAMS_PER_BLOCK = 3_540_096
TASKS = ("piqa", "arc_easy")
DENSE_TASKS = {"dense.piqa.acc": 0.64, "dense.piqa.acc_norm": 0.66, "dense.arc_easy.acc": 0.5,
               "dense.arc_easy.acc_norm": 0.47}
CAL = CalibrationSettings("lee-news", 4, 64, 0)
CAPTURE = CaptureSettings(sample_rows=256, store_dtype="float16")
EVAL = EvalSettings(windows=2, tasks=TASKS, limit=20)
SAMPLES = [{"prompt": "The capital of France is", "completion": " Paris.", "new_tokens": 3,
            "stopped_at_eos": False, "seconds": 0.01}]
LATENCY = {"prefill_tokens_per_s": 812.5, "decode_tokens_per_s": 41.25, "prefill_s": 0.31, "decode_s": 0.78,
           "peak_memory_bytes": 612_000_000, "memory_kind": "rss_peak"}


@dataclass
class LoggedJob:
    """A job logged by a fixture: where, and what was logged."""

    uri: str
    experiment: str
    parent_id: str
    results: list[Result]
    root: Any


@dataclass
class Server:
    """A running ``mlflow server`` started by a fixture."""

    url: str
    root: Any
    proc: Any


@dataclass
class Result:
    """Mirrors ``runner.TrialResult`` (what ``log_job_summary`` reads)."""

    trial: TrialSpec
    plan: PrunePlan
    metrics: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str | None = None


def _jitter(name: str | None, n: int, scale: float) -> np.ndarray:
    seed = int(hashlib.sha256(str(name).encode()).hexdigest()[:8], 16)
    return scale * np.random.default_rng(seed).standard_normal(n)


def curves(estimator: str | None = None) -> dict[str, Any]:
    """BI, entropies (3 falling boundaries, then rising) and a run-MI table for one synthetic model."""
    i = np.arange(N_BLOCKS)
    bi = 0.04 + 0.35 * np.exp(-i / 1.5) + 0.02 * np.sin(i) + np.where(i == N_BLOCKS - 1, 0.3, 0.0)
    h = np.concatenate([[9.0, 8.4, 8.0, 7.8], 7.8 + 0.25 * np.arange(1, N_BLOCKS - 2)])
    h = h + _jitter(estimator, N_BLOCKS + 1, 0.01)
    table = dpi_run_table(N_BLOCKS, seed=7, max_length=4)
    return {"bi": [float(v) for v in bi], "h": [float(v) for v in h], "table": table}


def make_plan(trial: TrialSpec) -> PrunePlan:
    """Score and select like ``runner.score_and_select`` + ``make_plan``, on synthetic curves."""
    c = curves(trial.estimator)
    scores: dict[str, list[float]] = {"bi": c["bi"]}
    info: dict[str, Any] = {}
    block_scores = None
    scorer = None
    if trial.method == "shortgpt":
        block_scores = c["bi"]
    elif trial.method == "entrodrop":
        h = c["h"]
        block_scores = scores["delta_h"] = [h[k + 1] - h[k] for k in range(N_BLOCKS)]
        info["entropy"] = {f"h_{k:03d}": v for k, v in enumerate(h)}
    elif trial.method in ("mi_greedy", "mi_fbs", "mi_brute"):
        table = {r: v + float(_jitter(trial.estimator, 1, 0.002)[0]) for r, v in c["table"].items()}
        scorer = TableScorer(table)
        singles = [table[(k,)] for k in range(N_BLOCKS)]
        scores["mi"] = singles
        if trial.method == "mi_greedy":
            block_scores = singles
    sel = select(trial.method, N_BLOCKS, trial.n_prune, block_scores=block_scores, score_run=scorer,
                 s_start=trial.s_start)
    run_scores = {run_key(r): float(v) for r, v in sel.run_scores.items()}
    if scorer is not None and not run_scores:  # greedy asks singles only
        run_scores = {f"{k}-{k}": v for k, v in enumerate(scores["mi"])}
    assert METHODS.get(trial.method)
    return PrunePlan(
        model_id=MODEL, revision=REVISION, n_blocks=N_BLOCKS, blocks=sel.blocks, granularity=trial.granularity,
        method=trial.method, estimator=trial.estimator, estimator_params=dict(trial.estimator_params),
        calibration=CAL, scores=scores, run_scores=run_scores,
        info={**{k: v for k, v in sel.info.items() if k != "trace"}, **info, "evaluations": sel.evaluations,
              "store": STORE},
    )


def trial_metrics(plan: PrunePlan) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The runner's ``out`` dict (same names), values a deterministic function of the dropped blocks."""
    damage = sum(0.9 / (1 + b) + 0.05 for b in plan.blocks)
    ppl = DENSE_PPL * math.exp(damage)
    removed = PARAMS_PER_BLOCK * plan.n_prune
    tasks = {t: {"acc": round(0.64 - 0.01 * j - 0.03 * damage, 4), "acc_norm": round(0.66 - 0.02 * damage, 4),
                 "n": 20.0} for j, t in enumerate(TASKS)}
    pruned = {"ppl": ppl, "nll": math.log(ppl), "eval_tokens": 126.0, "params_total": DENSE_PARAMS - removed,
              "params_per_token": DENSE_PARAMS - removed - 28_311_552, "eval_seconds": 0.5}
    pruned |= {f"{t}.{k}": v for t, vals in tasks.items() for k, v in vals.items()}
    out = {
        "ppl_dense": DENSE_PPL, "ppl_pruned": ppl, "ppl_ratio": ppl / DENSE_PPL,
        "params_removed": float(removed), "params_removed_frac": removed / DENSE_PARAMS,
        "exact_scores": float(plan.info["evaluations"]), "scoring_selection_seconds": 0.01 * (1 + plan.n_prune),
        "capture_seconds": 3.5, "tokens_calibrated": float(CAL.n_samples * CAL.seq_len),
    } | {f"pruned.{k}": v for k, v in pruned.items()}
    return out, tasks


def log_job(tracker: Tracker, trials: list[TrialSpec], *, job_name: str = "synthetic-job", figures: bool = True,
            extras: bool = True) -> tuple[str | None, list[Result]]:
    """One parent run and one child per trial, logged the way ``runner.run_job`` / ``_run_trial`` do."""
    tracker.check()
    job_params = {"model": MODEL, "revision": REVISION, "calibration": asdict(CAL), "capture": asdict(CAPTURE),
                  "evaluation": asdict(EVAL), "n_trials": len(trials)}
    results: list[Result] = []
    with tracker.run(job_name, params=job_params, tags={"blockprune.kind": "job", "model": MODEL}) as parent_id:
        tracker.log_metrics({"dense.ppl": DENSE_PPL, "dense.params_total": DENSE_PARAMS, "capture_seconds": 3.5,
                             "tokens_calibrated": CAL.n_samples * CAL.seq_len} | DENSE_TASKS)
        tracker.set_tags({"store_checksum": STORE, "store_reused": False})
        for trial in trials:
            plan = make_plan(trial)
            out, tasks = trial_metrics(plan)
            params = {"model": MODEL, "revision": REVISION, "calibration": asdict(CAL), "method": trial.method,
                      "estimator": trial.estimator or "none", "estimator_params": trial.estimator_params,
                      "granularity": trial.granularity, "n_prune": trial.n_prune, "capture": asdict(CAPTURE)}
            with tracker.run(trial.name, params=params, nested=True,
                             tags={"blockprune.kind": "trial", "model": MODEL, "store_checksum": STORE,
                                   "model_revision": REVISION}) as run_id:
                tracker.log_metrics(out)
                if extras:
                    log_trial(tracker, plan, out, tasks=tasks, latency=LATENCY, samples=SAMPLES, figures=figures)
                else:
                    log_trial(tracker, plan, out, figures=figures)
            results.append(Result(trial, plan, out, tasks, run_id))
        log_job_summary(tracker, results, figures=figures)
        tracker.log_metrics({"job_seconds": 1.0})
    return parent_id, results


THREE_TRIALS = [
    TrialSpec("shortgpt", 3),
    TrialSpec("entrodrop", 3, estimator="entropy.knn", estimator_params={"k": 3}),
    TrialSpec("mi_fbs", 3, estimator="mi.ksg", estimator_params={"k": 3, "p": 16}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_health(url: str, timeout: float, proc: Any = None) -> None:
    """Poll ``/health`` until 200; fail early if the server process died."""
    import urllib.request

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError as e:
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {url} not healthy after {timeout:.0f} s ({last})")


# ------------------------------------------------------------------------------------------ checking

COMMON_METRICS = (
    "ppl_dense", "ppl_pruned", "ppl_ratio", "params_removed", "params_removed_frac", "exact_scores",
    "scoring_selection_seconds", "capture_seconds", "tokens_calibrated", "pruned.ppl", "n_dropped", "n_blocks",
    "score.bi",
)
EXTRA_METRICS = ("pruned.piqa.acc", "pruned.piqa.acc_norm", "pruned.arc_easy.acc", "pruned.arc_easy.acc_norm",
                 "latency.prefill_tokens_per_s", "latency.decode_tokens_per_s")
METHOD_METRICS = {
    "entrodrop": ("score.delta_h", "entropy.h", "s_start"),
    "mi_fbs": ("score.mi", "run_mi.len_01", "run_mi.len_02", "exact_scores_brute_force", "run_scores_known"),
    "mi_brute": ("score.mi", "run_mi.len_01", "exact_scores_brute_force"),
}
METHOD_ARTIFACTS = {
    "entrodrop": ("figures/entropy.png", "figures/score_delta_h.png", "tables/entropy.json"),
    "mi_fbs": ("figures/run_mi_heatmap.png", "figures/score_mi.png", "tables/run_scores.json"),
}
TRIAL_PARAMS = ("model", "revision", "calibration.corpus", "calibration.n_samples", "calibration.seq_len",
                "calibration.seed", "method", "estimator", "granularity", "n_prune", "s_start",
                "capture.sample_rows", "capture.store_dtype")
TAGS = ("blockprune.job_id", "blockprune.git_commit", "model", "model_revision", "store_checksum")


def list_artifacts(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for a in client.list_artifacts(run_id, path):
        out |= list_artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def read_artifact(client: Any, run_id: str, path: str, tmp: Any) -> bytes:
    from pathlib import Path

    local = client.download_artifacts(run_id, path, str(tmp))
    return Path(local).read_bytes()


def assert_job_logged(uri: str, experiment: str, parent_id: str, results: list[Result], tmp: Any,
                      extras: bool = True, figures: bool = True) -> None:
    """One parent, one child per trial, with every param, tag, metric curve and artifact of the issue."""
    import json

    import mlflow

    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    children = mlflow.search_runs(experiment_names=[experiment],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    assert len(children) == len(results)
    assert set(children["tags.blockprune.kind"]) == {"trial"}
    parents = mlflow.search_runs(experiment_names=[experiment], filter_string="tags.`blockprune.kind` = 'job'")
    assert parent_id in set(parents["run_id"])
    parent = client.get_run(parent_id)
    assert parent.data.tags["store_checksum"] == STORE and parent.data.tags["model_revision"] == REVISION
    assert parent.data.metrics["dense.ppl"] == DENSE_PPL
    job_id = parent.data.tags["blockprune.job_id"]
    assert parent.data.tags["blockprune.git_commit"]
    by_id = {r.run_id: r for r in results}
    assert set(children["run_id"]) == set(by_id)
    for run_id, res in by_id.items():
        run = client.get_run(run_id)
        plan, trial = res.plan, res.trial
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        for t in TAGS:
            assert tags.get(t), f"tag {t} missing on {trial.name}"
        assert tags["blockprune.job_id"] == job_id
        assert tags["blockprune.git_commit"] == parent.data.tags["blockprune.git_commit"]
        assert tags["blockprune.blocks"] == ",".join(map(str, plan.blocks))
        for p in TRIAL_PARAMS:
            assert p in params, f"param {p} missing on {trial.name}"
        assert params["method"] == trial.method and params["n_prune"] == str(trial.n_prune)
        assert params["estimator"] == (trial.estimator or "none")
        for k, v in trial.estimator_params.items():
            assert params[f"estimator_params.{k}"] == str(v)
        wanted = COMMON_METRICS + (EXTRA_METRICS if extras else ()) + METHOD_METRICS.get(trial.method, ())
        for m in wanted:
            assert m in metrics, f"metric {m} missing on {trial.name}"
        for k, v in res.metrics.items():
            assert metrics[k] == v, k
        # Per-block curves: step = block index, values = the plan's scores.
        for name, values in plan.scores.items():
            hist = sorted(client.get_metric_history(run_id, f"score.{name}"), key=lambda m: m.step)
            assert [m.step for m in hist] == list(range(plan.n_blocks))
            assert [m.value for m in hist] == values
        if trial.method == "entrodrop":
            hist = client.get_metric_history(run_id, "entropy.h")
            assert sorted(m.step for m in hist) == list(range(plan.n_blocks + 1))
            assert metrics["s_start"] == plan.info["s_start"]
        if plan.run_scores:
            twos = sorted(parse_run_key(k)[0] for k in plan.run_scores if len(parse_run_key(k)) == 2)
            hist = client.get_metric_history(run_id, "run_mi.len_02")
            assert sorted(m.step for m in hist) == twos
            assert metrics["exact_scores"] == plan.info["evaluations"] < metrics["exact_scores_brute_force"]
        arts = list_artifacts(client, run_id)
        need = {"plan.json", "tables/block_scores.json"}
        if figures:
            need |= {"figures/score_bi.png", *METHOD_ARTIFACTS.get(trial.method, ())}
        if extras:
            need |= {"eval/tasks.json", "eval/latency.json", "samples/generation.json", "samples/generation.txt"}
        assert need <= arts, need - arts
        assert PrunePlan.from_json(read_artifact(client, run_id, "plan.json", tmp).decode()) == plan
        table = json.loads(read_artifact(client, run_id, "tables/block_scores.json", tmp))
        assert table["columns"][:3] == ["block", "dropped", "bi"] and len(table["data"]) == plan.n_blocks
        assert [row[1] for row in table["data"]] == [i in plan.blocks for i in range(plan.n_blocks)]
        if figures:
            assert read_artifact(client, run_id, "figures/score_bi.png", tmp)[:8] == b"\x89PNG\r\n\x1a\n"
    parts = list_artifacts(client, parent_id)
    assert "tables/trials.json" in parts
    if figures:
        assert "figures/dropped_blocks.png" in parts
        assert any(p.startswith("agreement/") and p.endswith(".json") for p in parts)
