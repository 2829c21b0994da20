"""The Lightning side of healing: a LightningModule around the PEFT model and a DataModule of windows.

Checkpoints hold only what training changes (the LoRA tensors, optimizer, scheduler, loop state and
the RNG), not the frozen base: a checkpoint of a 135M model is a few MB, so it can be written every
few steps, and the base is re-read from the pruned checkpoint on resume. A fingerprint of the base and
of the config travels in every checkpoint, and resuming onto anything else is refused.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from blockprune.errors import BadInputError
from blockprune.healing.config import HealConfig
from blockprune.healing.data import (
    StepBatchSampler,
    TrainingWindows,
    WindowDataset,
    validation_dataset,
    window_order,
)

CKPT_KEY = "blockprune_heal"


class CheckpointMismatchError(BadInputError):
    """A checkpoint written for another base model or another config."""


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class HealingModule(pl.LightningModule):
    """Causal-LM loss on training windows; validation perplexity per held-out corpus.

    The loss of one optimizer step (mean over the whole global batch, all micro-batches and ranks)
    is logged as ``train/loss`` at that step; ``history`` keeps (step, loss) for tests and reports.
    """

    def __init__(self, peft_model: Any, cfg: HealConfig, fingerprint: str, val_names: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.model = peft_model
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.val_names = val_names
        self.strict_loading = False  # checkpoints omit the frozen base on purpose
        self.history: list[tuple[int, float]] = []
        self.val_history: list[tuple[int, dict[str, float]]] = []
        self._acc_loss = 0.0
        self._acc_n = 0
        self._val_sums: torch.Tensor | None = None

    # ---- training -------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor) -> Any:
        return self.model(input_ids=input_ids, labels=input_ids, use_cache=False)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(batch["input_ids"]).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step + 1}")
        self._acc_loss += float(loss.detach())
        self._acc_n += 1
        if self._acc_n == self.trainer.accumulate_grad_batches:  # last micro-batch of this optimizer step
            self._record_step()
        return loss

    def _record_step(self) -> None:
        """Mean loss of the step over all micro-batches and ranks, logged before callbacks checkpoint the step."""
        mean = torch.tensor(self._acc_loss / self._acc_n, device=self.device, dtype=torch.float64)
        value = float(self.trainer.strategy.reduce(mean, reduce_op="mean"))
        self._acc_loss, self._acc_n = 0.0, 0
        step = self.global_step + 1  # the optimizer step this batch completes
        self.history.append((step, value))
        lr = self.trainer.optimizers[0].param_groups[0]["lr"] if self.trainer.optimizers else float("nan")
        self.log("loss", value, prog_bar=True, logger=False)
        self._to_loggers({"train/loss": value, "train/lr": lr, "train/tokens": step * self.cfg.tokens_per_step}, step)

    def _to_loggers(self, metrics: dict[str, float], step: int) -> None:
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics(metrics, step=step)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        total, warm, floor = self.cfg.total_steps, self.cfg.warmup_steps, self.cfg.min_lr_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, warm, total, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ---- validation -----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(max(1, len(self.val_names)), 2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        ids = batch["input_ids"]
        logits = self.model(input_ids=ids, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                reduction="none").view(ids.shape[0], -1)
        assert self._val_sums is not None
        for row, c in zip(nll, batch["corpus"].tolist(), strict=True):
            self._val_sums[c, 0] += row.double().sum()
            self._val_sums[c, 1] += row.numel()

    def on_validation_epoch_end(self) -> None:
        assert self._val_sums is not None
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        out: dict[str, float] = {}
        for k, name in enumerate(self.val_names):
            if float(sums[k, 1]) > 0:
                out[f"val/ppl.{name}"] = math.exp(float(sums[k, 0] / sums[k, 1]))
        if float(sums[:, 1].sum()) > 0:
            out["val/ppl"] = math.exp(float(sums[:, 0].sum() / sums[:, 1].sum()))
        step = self.global_step
        self.val_history.append((step, out))
        if "val/ppl" in out:
            self.log("val_ppl", out["val/ppl"], prog_bar=True, logger=False, rank_zero_only=True)
        self._to_loggers(out, step)

    # ---- checkpoints ----------------------------------------------------------------------
    def _trainable_keys(self) -> set[str]:
        """State-dict names of the LoRA tensors (FSDP's wrapper segments removed: its full state dict has none)."""
        names = (name for name, p in self.named_parameters() if p.requires_grad)
        return {n.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "") for n in names}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[CKPT_KEY] = {"fingerprint": self.fingerprint, "config": self.cfg.to_dict(),
                                "rng": torch.get_rng_state(), "history": list(self.history)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CKPT_KEY)
        if meta is None:
            raise CheckpointMismatchError("this checkpoint was not written by blockprune heal")
        if meta["fingerprint"] != self.fingerprint:
            raise CheckpointMismatchError(
                "the checkpoint was trained on another base model or plan; use a fresh --out or the original input")
        if HealConfig.from_dict(meta["config"]) != self.cfg:
            theirs, ours = HealConfig.from_dict(meta["config"]).to_dict(), self.cfg.to_dict()
            diff = sorted(k for k in ours if ours[k] != theirs.get(k))
            raise CheckpointMismatchError(f"the checkpoint was written with other settings ({', '.join(diff)}); "
                                          "resume with the same settings or use a fresh --out")
        missing = self._trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise CheckpointMismatchError(f"checkpoint lacks adapter tensors, e.g. {sorted(missing)[:3]}")
        torch.set_rng_state(meta["rng"])
        self.history = [tuple(h) for h in meta.get("history", [])]  # type: ignore[misc]


class HealingData(pl.LightningDataModule):
    """Training windows in :class:`StepBatchSampler` order (from the restored step on resume), validation windows."""

    def __init__(self, train: TrainingWindows, val_sets: dict[str, Any], cfg: HealConfig) -> None:
        super().__init__()
        self.train_windows, self.val_sets, self.cfg = train, val_sets, cfg
        self.order = window_order(len(train), cfg.seed)
        self.sampler: StepBatchSampler | None = None

    def train_dataloader(self) -> DataLoader:
        t = self.trainer
        assert t is not None
        world, rank = t.world_size, t.global_rank
        self.sampler = StepBatchSampler(self.order, self.cfg.micro_batch, self.cfg.accumulation(world), world, rank,
                                        self.cfg.total_steps, start_step=t.global_step)
        ds = WindowDataset(self.train_windows.input_ids, self.train_windows.corpus_of_window)
        return DataLoader(ds, batch_sampler=self.sampler, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        t = self.trainer
        world, rank = (t.world_size, t.global_rank) if t is not None else (1, 0)
        return DataLoader(validation_dataset(self.val_sets, rank, world), batch_size=self.cfg.micro_batch,
                          shuffle=False, num_workers=0)
