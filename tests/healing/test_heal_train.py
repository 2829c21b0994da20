"""The Lightning loop: a Ctrl-C/SIGTERM leaves a checkpoint that resumes the same loss curve; batches never
carry held-out documents."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from heal_helpers import tiny_config

from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.windows import split_document_ids
from blockprune.healing.lora import adapter_state
from blockprune.healing.run import fit_lora, prepare_heal
from blockprune.healing.source import resolve_source
from blockprune.healing.trainer import TrainerSetup

pytestmark = pytest.mark.integration


class SeenWindows(pl.Callback):
    """Records every training window index a batch carried."""

    def __init__(self) -> None:
        self.windows: list[int] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.windows.extend(int(w) for w in batch["window"])


class SignalAt(pl.Callback):
    """Sends this process a real signal once the given optimizer step is done (what Ctrl-C / `kill` do)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum, self.sent = step, signum, False

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


def _fit(inputs: Any, out: Path, callbacks: list[Any], resume: Path | None = None) -> Any:
    model, _ = inputs.source.load()
    setup = TrainerSetup(out_dir=out, accelerator="cpu", progress=False, callbacks=callbacks)
    return fit_lora(inputs, model, setup, resume=resume)


@pytest.fixture(scope="module")
def inputs(tiny_pruned: Path) -> Any:
    return prepare_heal(resolve_source(pruned=str(tiny_pruned)), tiny_config(corpora=("lee-news", "wikipedia")))


@pytest.fixture(scope="module")
def straight(inputs: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, list[int]]:
    seen = SeenWindows()
    outcome, peft_model = _fit(inputs, tmp_path_factory.mktemp("straight"), [seen])
    return outcome, adapter_state(peft_model), seen.windows


def test_training_batches_carry_no_heldout_document(inputs: Any, straight: Any) -> None:
    outcome, _, windows = straight
    cfg = inputs.cfg
    assert outcome.steps == cfg.total_steps and outcome.stopped is None
    assert len(windows) == cfg.total_steps * cfg.batch_size == len(set(windows))
    docs = inputs.train.window_documents(windows)
    assert {c for c, _ in docs} == {"lee-news", "wikipedia"} or len(docs) > 0
    for name in cfg.corpora:
        _, held = split_document_ids(load_corpus(name))
        assert {i for c, i in docs if c == name}.isdisjoint(held)
    losses = [loss for _, loss in outcome.history]
    assert [s for s, _ in outcome.history] == list(range(1, cfg.total_steps + 1))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert [s for s, _ in outcome.val_history] == [3, 6] and all("val/ppl" in v for _, v in outcome.val_history)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_leaves_a_checkpoint_that_resumes_the_same_curve(inputs: Any, straight: Any, signum: int,
                                                                tmp_path: Path) -> None:
    full, full_state, full_windows = straight
    # whatever the process had before (Python's default, or SIG_IGN when started in the background)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    first_seen = SeenWindows()
    first, _ = _fit(inputs, tmp_path, [SignalAt(3, signum), first_seen])
    assert first.stopped == "signal" and first.steps == 3
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    assert {s: signal.getsignal(s) for s in before} == before  # the run's handlers are removed again
    second_seen = SeenWindows()
    second, peft_model = _fit(inputs, tmp_path, [second_seen], resume=ckpt)
    assert second.steps == full.steps and second.stopped is None
    assert first_seen.windows + second_seen.windows == full_windows  # same windows, same order, none twice
    resumed = dict(second.history)
    for step, loss in full.history:
        assert resumed[step] == pytest.approx(loss, rel=1e-6, abs=1e-6), step
    state = adapter_state(peft_model)
    assert max(float((state[k] - full_state[k]).abs().max()) for k in state) <= 1e-6
