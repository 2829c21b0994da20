"""The Lightning Trainer for healing, and stopping it cleanly: on Ctrl-C / SIGTERM and on a time budget.

A stop is only ever taken at an optimizer-step boundary, after the step, with every rank agreeing
(one boolean all-reduce per step), and it writes ``last.ckpt`` first: whatever stops a run, the
checkpoint it leaves resumes to the same loss curve. A second Ctrl-C stops at once.

Precision by device: ``auto`` is ``bf16-mixed`` on a GPU that supports bfloat16, ``32-true``
elsewhere (CPU bf16 autocast is slower than fp32 on most CPUs and changes the numbers).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar

from blockprune.healing.config import HealConfig

log = logging.getLogger(__name__)
LAST = "last.ckpt"


def choose_precision(requested: str, accelerator: str = "auto") -> str:
    """``auto`` → bf16-mixed on a bf16-capable GPU, else 32-true."""
    if requested != "auto":
        return requested
    gpu = accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return "bf16-mixed" if gpu and torch.cuda.is_bf16_supported() else "32-true"


class StopControl(Callback):
    """Stops at the next step boundary on SIGINT/SIGTERM or when ``minutes`` of training have passed.

    ``reason`` is ``None`` while running, then ``"signal"`` or ``"time"``; a run that reaches its
    step budget leaves it ``None``. Signal handlers are installed only in the main thread (Ray Train
    runs the loop in a worker thread; there the driver's failure handling applies).
    """

    def __init__(self, ckpt_dir: Path, minutes: float | None = None) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.minutes = minutes
        self.reason: str | None = None
        self._requested = False
        self._t0 = 0.0
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self._requested:  # second signal: stop now
            self._restore()
            raise KeyboardInterrupt
        self._requested = True
        log.warning("received %s: finishing this step, writing a checkpoint, then stopping "
                    "(press Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.monotonic()
        self.reason = None
        self._requested = False
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):  # replaces Lightning's SIGTERM handler for the run
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handler)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: never stop here
        over_time = self.minutes is not None and time.monotonic() - self._t0 > self.minutes * 60
        stop = trainer.strategy.reduce_boolean_decision(self._requested or over_time, all=False)
        if not stop or trainer.global_step >= (trainer.max_steps or 0):
            return
        self.reason = "signal" if trainer.strategy.reduce_boolean_decision(self._requested, all=False) else "time"
        trainer.save_checkpoint(self.ckpt_dir / LAST)
        trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()


@dataclass
class TrainerSetup:
    """Where a run writes, and how it is spread over devices."""

    out_dir: Path
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: Any = "auto"
    plugins: list[Any] = field(default_factory=list)
    logger: Any = False
    progress: bool = True
    callbacks: list[Any] = field(default_factory=list)

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.out_dir) / "checkpoints"


def build_trainer(cfg: HealConfig, setup: TrainerSetup, world_size: int = 1) -> tuple[pl.Trainer, StopControl]:
    """A Trainer that runs ``cfg.total_steps`` optimizer steps of ``cfg.batch_size`` windows."""
    accum = cfg.accumulation(world_size)
    stop = StopControl(setup.ckpt_dir, cfg.minutes)
    periodic = ModelCheckpoint(dirpath=setup.ckpt_dir, filename="{step}", every_n_train_steps=cfg.ckpt_every,
                               save_top_k=1, save_last=True, save_on_train_epoch_end=True)
    callbacks: list[Any] = [*setup.callbacks, stop, periodic]  # caller hooks see a step before the stop check
    if setup.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    val_every = cfg.val_every * accum if cfg.val_every else None
    trainer = pl.Trainer(
        accelerator=setup.accelerator, devices=setup.devices, strategy=setup.strategy, plugins=setup.plugins or None,
        precision=choose_precision(cfg.precision, setup.accelerator),  # type: ignore[arg-type]
        max_steps=cfg.total_steps, max_epochs=1, accumulate_grad_batches=accum,
        gradient_clip_val=cfg.grad_clip or None, gradient_clip_algorithm="norm",
        val_check_interval=val_every, check_val_every_n_epoch=None if val_every else 1,
        limit_val_batches=None if val_every else 0, num_sanity_val_steps=0,
        logger=setup.logger, callbacks=callbacks, enable_progress_bar=setup.progress,
        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=str(setup.out_dir),
        log_every_n_steps=1, deterministic=False,
    )
    return trainer, stop


def last_checkpoint(out_dir: Path) -> Path | None:
    path = Path(out_dir) / "checkpoints" / LAST
    return path if path.exists() else None
