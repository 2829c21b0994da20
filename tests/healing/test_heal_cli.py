"""``blockprune heal`` end to end on a tiny checkpoint: bad input fails in one line before training, a run logs
under its trial in a real sqlite MLflow store, and the healed model reloads with the logged perplexity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from heal_helpers import save_tiny_pruned

from blockprune.jobs import heal as heal_job
from blockprune.selection.plan import PrunePlan

pytestmark = pytest.mark.integration

TINY = ["--corpus", "lee-news", "--seq-len", "64", "--batch-size", "4", "--micro-batch", "2", "--rank", "4",
        "--eval-windows", "2", "--val-windows", "2", "--val-every", "2", "--ckpt-every", "2", "--lr", "5e-3",
        "--quiet"]


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    capsys.readouterr()  # only what this call prints
    assert heal_job.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("blockprune: error:") and match in err[0], err


@pytest.mark.parametrize(("extra", "match"), [
    (["--steps", "100000"], "at most"),  # more tokens than the training split holds
    (["--targets", "q_proj,qkv_proj"], "unknown LoRA target module(s) ['qkv_proj']"),
    (["--devices", str((os.cpu_count() or 1) + 1), "--accelerator", "cpu"], "this machine has"),
    (["--batch-size", "5"], "not a multiple"),
    (["--resume"], "--resume: no checkpoint"),
])
def test_bad_input_is_one_line_before_training(tiny_pruned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               extra: list[str], match: str) -> None:
    out = tmp_path / "out"
    _fails(["--pruned", str(tiny_pruned), "--out", str(out), "--no-tracking", "--no-dense", *TINY, *extra], capsys, match)
    assert not (out / "checkpoints").exists()


def test_plan_and_checkpoint_must_agree(tiny_pruned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = PrunePlan(model_id="tiny-llama", n_blocks=6, blocks=(2, 3)).save(tmp_path / "other.json")
    _fails(["--pruned", str(tiny_pruned), "--plan", str(other), "--no-tracking", "--no-dense", *TINY], capsys,
           "plan mismatch")
    wrong_size = PrunePlan(model_id="smollm2-135m", n_blocks=18, blocks=(3,)).save(tmp_path / "wrong.json")
    _fails(["--plan", str(wrong_size), "--no-tracking", *TINY], capsys, "has 30 layers")
    _fails(["--plan", str(wrong_size), "--model", "gemma3-270m", "--no-tracking", *TINY], capsys, "plan mismatch")
    _fails(["--pruned", str(tmp_path), "--no-tracking", *TINY], capsys, "no config.json")


def _trial_run(uri: str, pruned: Path) -> str:
    """A trial run as ``blockprune calibrate --save-dir`` leaves it (kind=trial, saved_to=the checkpoint)."""
    from blockprune.tracking.tracker import Tracker

    tracker = Tracker(uri, "blockprune")
    with tracker.run("job", tags={"blockprune.kind": "job"}), \
            tracker.run("shortgpt/layer/k=2", nested=True, tags={"blockprune.kind": "trial", "saved_to": pruned}) as rid:
        tracker.log_metrics({"ppl_pruned": 1.0})
    assert rid is not None
    return rid


def test_heal_logs_under_its_trial_and_the_healed_model_reloads(tiny_pruned: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow import MlflowClient
    from transformers import AutoModelForCausalLM

    from blockprune.healing.tracking import healed_metrics
    from blockprune.healing.trainer import LAST
    from blockprune.models.apply import read_plan

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trial = _trial_run(uri, tiny_pruned)
    out = tmp_path / "healed"
    rc = heal_job.main(["--pruned", str(tiny_pruned), "--out", str(out), "--steps", "4", "--tracking-uri", uri,
                        "--no-dense", *TINY])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out.strip().splitlines()[-3])["parent_run"] == trial  # the printed summary line
    summary = json.loads((out / "heal.json").read_text())
    healed = healed_metrics([trial], uri)[trial]
    assert healed["ppl_after.lee-news"] == pytest.approx(summary["ppl_after"]["lee-news"])
    assert healed["tokens_trained"] == 4 * 4 * 64 and healed["steps"] == 4
    client = MlflowClient(uri)
    run = client.get_run(healed["heal_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == trial and run.data.tags["heal.status"] == "completed"
    assert run.data.params["config.lr"] == "0.005" and run.data.params["config.lora.rank"] == "4"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/ppl")] == [2, 4]
    assert Path(run.data.tags["heal.merged_path"]) == out / "merged" and (out / "adapter" / "adapter_config.json").exists()
    assert (out / "checkpoints" / LAST).stat().st_size < 5e6  # adapter-only checkpoints
    # the merged model reloads with stock transformers and measures the logged perplexity
    from blockprune.calibration.corpora import load_corpus
    from blockprune.calibration.windows import heldout_windows
    from blockprune.evaluation.perplexity import chunk_perplexity

    model = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    from transformers import AutoTokenizer

    windows = heldout_windows(AutoTokenizer.from_pretrained(out / "merged"), load_corpus("lee-news"), 64, 2)
    assert chunk_perplexity(model, windows, progress=False).perplexity == pytest.approx(healed["ppl_after.lee-news"],
                                                                                        rel=1e-5)
    assert read_plan(out / "merged") == read_plan(tiny_pruned)
    # the same folder again without --resume is refused (it would silently mix two runs)
    _fails(["--pruned", str(tiny_pruned), "--out", str(out), "--no-tracking", "--no-dense", *TINY], capsys,
           "pass --resume")


@pytest.mark.slow
def test_ctrl_c_exits_130_and_resume_finishes_the_same_mlflow_run(tokenizer: Any, tmp_path: Path) -> None:
    """A real SIGINT to a real ``python -m blockprune.jobs.heal`` process, then ``--resume``."""
    from mlflow import MlflowClient

    pruned = save_tiny_pruned(tmp_path / "pruned", tokenizer)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "healed"
    argv = [sys.executable, "-m", "blockprune.jobs.heal", "--pruned", str(pruned), "--out", str(out), "--steps", "10",
            "--tracking-uri", uri, "--no-dense", *TINY, "--ckpt-every", "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("step=*.ckpt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "rerun with --resume" in err and (out / "checkpoints" / "last.ckpt").exists()
    run_id = json.loads((out / "heal_run.json").read_text())["run_id"]
    client = MlflowClient(uri)
    assert client.get_run(run_id).info.status == "KILLED"
    done = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run_id, "train/loss")})
    assert steps == list(range(1, 11))  # one curve, interrupted and resumed in the same run
