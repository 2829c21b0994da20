"""The calibrate entry point end to end on real weights, and its input checks."""

from __future__ import annotations

import json

import mlflow
import pytest

from blockprune.jobs.calibrate import main
from blockprune.pipeline import backend

pytestmark = pytest.mark.integration

SMALL = ["--corpus", "lee-news", "--n-samples", "4", "--seq-len", "64", "--sample-rows", "128",
         "--eval-windows", "2", "--quiet"]


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if weights are loaded: bad input must be rejected before that."""

    def forbidden(*a, **k):
        raise AssertionError("model weights were loaded before the input was validated")

    monkeypatch.setattr(backend, "load_model", forbidden)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "smollm2-135m", "--prune", "30"], "between 1 and 29"),
    (["--model", "smollm2-135m", "--prune", "0"], "between 1 and 29"),
    (["--model", "smollm2-135m", "--n-samples", "5000", "--seq-len", "512"], "fewer than the 5000 × 512"),
    (["--model", "no-such-model"], "bundled models: gemma3-270m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, smollm2-135m"),
    (["--model", "smollm2-135m", "--corpus", "no-such-corpus"], "known: lambada, lee-news, wikipedia"),
    (["--model", "smollm2-135m", "--method", "nope"], "unknown selection method 'nope'"),
    (["--model", "smollm2-135m", "--method", "mi_fbs", "--granularity", "attention"], "whole layers"),
])
def test_bad_input_fails_before_loading_weights(args, message, no_weights, tmp_path, capsys) -> None:
    code = main(args + ["--store-root", str(tmp_path), "--no-tracking", "--quiet"]
                + (["--corpus", "lee-news"] if "--corpus" not in args else []))
    assert code == 2
    assert message in capsys.readouterr().err


def test_unknown_architecture_fails_before_loading_weights(no_weights, tmp_path, capsys) -> None:
    from transformers import AutoConfig

    AutoConfig.for_model("opt", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         ffn_dim=32).save_pretrained(tmp_path / "opt")
    assert main(["--model", str(tmp_path / "opt"), "--no-tracking", "--corpus", "lee-news"]) == 2
    err = capsys.readouterr().err
    assert "unsupported architecture 'opt'" in err and "llama" in err


def test_unreachable_tracking_server_fails_fast(no_weights, capsys) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["--model", "smollm2-135m", "--tracking-uri", f"http://127.0.0.1:{port}", *SMALL]) == 2
    assert "cannot reach the MLflow tracking server" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_job_prints_plan_perplexity_and_logs_to_sqlite(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args = ["--model", "smollm2-135m", "--method", "shortgpt", "--prune", "4", "--store-root",
            str(tmp_path / "stores"), "--plan-out", str(tmp_path / "plan.json"), *SMALL]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "dense perplexity" in out and "drop layers" in out and "mlflow.db" in out
    line = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][0])
    assert len(line["blocks"]) == 4 and line["ppl_pruned"] > line["ppl_dense"] > 1
    assert (tmp_path / "mlflow.db").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["blockprune"], output_format="list")
    child = next(r for r in runs if r.data.tags.get("blockprune.kind") == "trial")
    assert child.data.params["method"] == "shortgpt" and child.data.params["n_prune"] == "4"
    assert child.data.metrics["ppl_pruned"] == pytest.approx(line["ppl_pruned"], rel=1e-4)
    history = mlflow.MlflowClient().get_metric_history(child.info.run_id, "score.bi")
    assert sorted(m.step for m in history) == list(range(30))
    plan = mlflow.artifacts.load_dict(f"runs:/{child.info.run_id}/plan.json")
    assert plan["blocks"] == line["blocks"] and plan["calibration"]["corpus"] == "lee-news"
    # a rerun reuses the activation store: no recapture
    assert main(args) == 0
    assert "activation store reused" in capsys.readouterr().out
