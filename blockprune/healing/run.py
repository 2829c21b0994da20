"""One healing run: check → tokenise → perplexity before → LoRA training → merge → save → perplexity after.

:func:`prepare_heal` does everything that can fail on bad input without weights. :func:`fit_lora` is the
training loop proper, used unchanged by the in-process path and inside each Ray Train worker
(:mod:`blockprune.distributed.heal`), which only hand it another strategy. :func:`heal` is the whole
run for one process; jobs and the Ray driver call the same pieces.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.windows import TokenWindows
from blockprune.errors import BadInputError
from blockprune.healing.config import HealConfig
from blockprune.healing.data import TrainingWindows, check_budget, heldout_sets, training_windows
from blockprune.healing.lora import (
    adapter_state,
    merge_adapter,
    resolve_targets,
    trainable_summary,
    wrap_lora,
)
from blockprune.healing.source import HealSource, save_healed
from blockprune.healing.tracking import heal_run, log_result
from blockprune.healing.trainer import TrainerSetup, build_trainer, last_checkpoint
from blockprune.models.zoo import load_model, resolve_model
from blockprune.tracking.tracker import Tracker

log = logging.getLogger(__name__)
SUMMARY_FILE = "heal.json"


class TooManyDevicesError(BadInputError):
    """More devices asked for than this machine (or cluster) has."""


class HealingInterrupted(Exception):
    """Training stopped on a signal; a checkpoint to resume from was written (not a bad input: exit 130)."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted after step {step}; checkpoint {checkpoint}; rerun with --resume to continue")
        self.step, self.checkpoint = step, checkpoint


@dataclass
class HealInputs:
    """Everything tokenised and checked before any weights load."""

    source: HealSource
    cfg: HealConfig
    tokenizer: Any
    train: TrainingWindows
    val_sets: dict[str, TokenWindows]
    eval_sets: dict[str, TokenWindows]
    targets: list[str]


def check_devices(accelerator: str, devices: int) -> None:
    """Refuse ``devices`` beyond what this machine has (GPUs when asked for or found, else CPU cores)."""
    if devices < 1:
        raise BadInputError(f"--devices must be >= 1, got {devices}")
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if use_gpu:
        have = torch.cuda.device_count()
        if devices > have:
            raise TooManyDevicesError(f"--devices {devices} asks for {devices} GPU(s), this machine has {have}")
    elif accelerator not in ("cpu", "auto"):
        raise BadInputError(f"--accelerator must be auto, cpu or gpu, got {accelerator!r}")
    else:
        have = os.cpu_count() or 1
        if devices > have:
            raise TooManyDevicesError(f"--devices {devices} asks for {devices} CPU processes, this machine has "
                                      f"{have} cores")


def prepare_heal(source: HealSource, cfg: HealConfig, world_size: int = 1) -> HealInputs:
    """Tokenise the corpora, check budget, targets and batch split; raises before weights load."""
    cfg.accumulation(world_size)
    targets = resolve_targets(source.config, cfg.lora.targets)
    tok = source.tokenizer()
    corpora = [load_corpus(c, cfg.text_field) for c in cfg.corpora]
    train = training_windows(tok, corpora, cfg.seq_len)
    check_budget(train, cfg.total_steps, cfg.batch_size, cfg.seq_len)
    val_sets = heldout_sets(tok, corpora, cfg.seq_len, cfg.val_windows)
    by_name = {c.name: c for c in corpora}
    eval_corpora = [by_name.get(n) or load_corpus(n, cfg.text_field) for n in cfg.evaluation_corpora]
    eval_sets = heldout_sets(tok, eval_corpora, cfg.seq_len, cfg.eval_windows)
    return HealInputs(source, cfg, tok, train, val_sets, eval_sets, targets)


@dataclass
class FitOutcome:
    """What a training run did (rank 0's view)."""

    steps: int
    tokens: int
    seconds: float
    stopped: str | None  # None: ran its full budget; "time": stopped on --minutes; "signal": interrupted
    history: list[tuple[int, float]] = field(default_factory=list)
    val_history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    checkpoint: str | None = None
    trainable_params: int = 0
    world_size: int = 1
    accumulation: int = 1


def mlflow_logger(target: tuple[str, str, str] | None) -> Any:
    """Lightning's MLflow logger writing into an existing run (uri, experiment, run id), or no logger."""
    if target is None:
        return False
    from lightning.pytorch.loggers import MLFlowLogger

    uri, experiment, run_id = target
    return MLFlowLogger(experiment_name=experiment, tracking_uri=uri, run_id=run_id, log_model=False)


def fit_lora(inputs: HealInputs, model: Any, setup: TrainerSetup, world_size: int = 1, resume: str | Path | None = None,
             prepare_trainer: Callable[[Any], Any] | None = None) -> tuple[FitOutcome, Any]:
    """Wrap ``model`` with LoRA, train it, and return (outcome, the trained PEFT model).

    ``resume``: a Lightning checkpoint written by an earlier run with the same base and settings.
    Seeded before LoRA is created, so every rank (and every rerun) starts from the same adapter.
    """
    import lightning.pytorch as pl

    from blockprune.healing.module import HealingData, HealingModule

    cfg = inputs.cfg
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    peft_model = wrap_lora(model, cfg.lora, inputs.targets)
    peft_model.train()  # loaded models come in eval mode; LoRA dropout (if any) must be live
    module = HealingModule(peft_model, cfg, inputs.source.fingerprint, tuple(inputs.val_sets))
    data = HealingData(inputs.train, inputs.val_sets, cfg)
    trainer, stop = build_trainer(cfg, setup, world_size)
    if prepare_trainer is not None:
        trainer = prepare_trainer(trainer)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=str(resume) if resume else None)
    seconds = time.perf_counter() - t0
    step = trainer.global_step
    ckpt = setup.ckpt_dir / "last.ckpt"
    if stop.reason is None or not ckpt.exists():
        trainer.save_checkpoint(ckpt)  # the final state, also what a Ray driver merges from
    peft_model.eval()
    outcome = FitOutcome(steps=step, tokens=step * cfg.tokens_per_step, seconds=seconds, stopped=stop.reason,
                         history=list(module.history), val_history=list(module.val_history), checkpoint=str(ckpt),
                         trainable_params=trainable_summary(peft_model)["trainable_params"],
                         world_size=trainer.world_size, accumulation=trainer.accumulate_grad_batches)
    return outcome, peft_model


def adapter_from_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The LoRA tensors of a heal checkpoint, under PEFT's names (the LightningModule prefix stripped)."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    prefix = "model."
    return {k[len(prefix):].replace(".default.", ".", 1): v for k, v in ckpt["state_dict"].items()
            if k.startswith(prefix)}


def perplexities(model: Any, sets: dict[str, TokenWindows], batch_size: int, progress: bool = False) -> dict[str, float]:
    from blockprune.evaluation.perplexity import chunk_perplexity

    model.eval()
    return {name: chunk_perplexity(model, w, batch_size=batch_size, progress=progress).perplexity
            for name, w in sets.items()}


@dataclass
class HealResult:
    """The outcome of a healing run, as logged to MLflow and written to ``heal.json``."""

    source: str
    plan: dict[str, Any]
    config: dict[str, Any]
    out_dir: str
    merged_path: str | None
    adapter_path: str | None
    fit: FitOutcome
    ppl_before: dict[str, float]
    ppl_after: dict[str, float]
    ppl_dense: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    wall_seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """Flat scalar metrics (the names ``healed_metrics`` reads back)."""
        m: dict[str, float] = {"steps": self.fit.steps, "tokens_trained": self.fit.tokens,
                               "train_seconds": self.fit.seconds, "wall_seconds": self.wall_seconds,
                               "trainable_params": self.fit.trainable_params}
        for name, v in self.ppl_before.items():
            m[f"ppl_before.{name}"] = v
        for name, v in self.ppl_after.items():
            m[f"ppl_after.{name}"] = v
            if name in self.ppl_before:
                m[f"ppl_after_over_before.{name}"] = v / self.ppl_before[name]
        for name, d in self.ppl_dense.items():
            m[f"ppl_dense.{name}"] = d
            if name in self.ppl_before:
                m[f"ppl_ratio_before.{name}"] = self.ppl_before[name] / d
            if name in self.ppl_after:
                m[f"ppl_ratio_after.{name}"] = self.ppl_after[name] / d
                if name in self.ppl_before and self.ppl_before[name] > d:
                    gap = math.log(self.ppl_before[name] / d)
                    m[f"log_gap_recovered.{name}"] = 1 - math.log(self.ppl_after[name] / d) / gap
        return m

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = self.metrics()
        return d


def dense_perplexities(source: HealSource, sets: dict[str, TokenWindows], batch_size: int) -> dict[str, float]:
    """The dense model's perplexity on the same windows (loads it; skipped when it cannot be resolved)."""

    model, _, _ = load_model(source.model or source.plan.model_id)
    try:
        return perplexities(model, sets, batch_size)
    finally:
        del model


def write_summary(result: HealResult) -> Path:
    path = Path(result.out_dir) / SUMMARY_FILE
    path.write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n")
    return path


def finish(inputs: HealInputs, peft_model: Any, out_dir: Path, healing: dict[str, Any]) -> tuple[Any, Path, Path]:
    """Save the adapter, merge it into the base, save the merged model; returns (merged, merged dir, adapter dir)."""
    adapter_dir = out_dir / "adapter"
    peft_model.save_pretrained(adapter_dir)
    merged = peft_model.merge_and_unload()
    merged.config.use_cache = True
    merged_dir = out_dir / "merged"
    save_healed(merged, inputs.source.plan, merged_dir, inputs.tokenizer, healing)
    return merged.eval(), merged_dir, adapter_dir


def peft_from_checkpoint(inputs: HealInputs, checkpoint: str | Path, base: Any = None) -> Any:
    """A fresh base with the checkpoint's adapter on it (how a Ray driver gets the trained model)."""
    from peft import set_peft_model_state_dict

    if base is None:
        base, _ = inputs.source.load()
    peft_model = wrap_lora(base, inputs.cfg.lora, inputs.targets)
    set_peft_model_state_dict(peft_model, adapter_from_checkpoint(checkpoint))
    return peft_model.eval()


def merge_from_checkpoint(inputs: HealInputs, checkpoint: str | Path, base: Any = None) -> Any:
    """The merged model of a checkpoint's adapter (see :func:`merge_adapter`)."""
    if base is None:
        base, _ = inputs.source.load()
    return merge_adapter(base, inputs.cfg.lora, inputs.targets, adapter_from_checkpoint(checkpoint))


FitFn = Callable[[HealInputs, Path, "tuple[str, str, str] | None", "str | Path | None", bool], "tuple[FitOutcome, Any]"]


def local_fit(accelerator: str = "auto", devices: int = 1) -> FitFn:
    """A fit function training in this process, on one device (more: :func:`blockprune.distributed.heal.fit_on_ray`).

    Why not Lightning's own multi-device launch here: it re-executes the calling script once per device,
    which would repeat the perplexity measurements and the MLflow run around training.
    """
    if devices != 1:
        raise BadInputError(f"in-process healing uses one device, got {devices}; train through Ray for more "
                            "(blockprune heal --devices N does)")

    def fit(inputs: HealInputs, out_dir: Path, mlflow: tuple[str, str, str] | None, resume: str | Path | None,
            progress: bool) -> tuple[FitOutcome, Any]:
        model, _ = inputs.source.load()
        setup = TrainerSetup(out_dir=out_dir, accelerator=accelerator, devices=devices, logger=mlflow_logger(mlflow),
                             progress=progress)
        return fit_lora(inputs, model, setup, world_size=devices, resume=resume)

    return fit


def heal(inputs: HealInputs, out_dir: str | Path, *, fit: FitFn | None = None, tracker: Any = None,
         parent_run_id: str | None = None, resume: str | Path | None = None, dense: bool | dict[str, float] = True,
         progress: bool = True, tags: dict[str, Any] | None = None, echo: Callable[[str], None] = print) -> HealResult:
    """The whole healing of one pruned model; logs a ``heal`` run (child of ``parent_run_id``) when tracking.

    ``dense``: True measures the dense model on the same windows (for ratios), a dict passes known
    values, False skips it. ``fit`` trains and returns (outcome, trained PEFT model or None when the
    adapter lives only in the final checkpoint, as after a Ray run). Raises :class:`HealingInterrupted`
    after a Ctrl-C / SIGTERM, once the checkpoint is written.
    """

    t_start = time.perf_counter()
    tracker = tracker or Tracker(enabled=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fit = fit or local_fit()
    cfg, plan = inputs.cfg, inputs.source.plan
    ppl_dense = dense if isinstance(dense, dict) else (
        dense_perplexities(inputs.source, inputs.eval_sets, cfg.micro_batch) if dense else {})
    base, _ = inputs.source.load()
    ppl_before = perplexities(base, inputs.eval_sets, cfg.micro_batch, progress)
    del base
    echo(f"[blockprune] heal {inputs.source.describe()}: perplexity before "
         + ", ".join(f"{k} {v:.3f}" for k, v in ppl_before.items())
         + f"; training {cfg.total_steps} steps × {cfg.batch_size} × {cfg.seq_len} = {cfg.budget_tokens:,} tokens "
           f"on {', '.join(cfg.corpora)} (training split: {len(inputs.train)} windows)")
    params = {"config": cfg.to_dict(), "source": inputs.source.pruned_path or inputs.source.model,
              "plan": {"model": plan.model_id, "granularity": plan.granularity, "blocks": list(plan.blocks),
                       "method": plan.method}, "lora_targets": inputs.targets}
    run_tags = {"model": plan.model_id, **(tags or {})}
    with heal_run(tracker, "heal", parent_run_id=parent_run_id, params=params, tags=run_tags, out_dir=out_dir,
                  resume=resume is not None) as run_id:
        target = (tracker.tracking_uri, tracker.experiment, run_id) if run_id else None
        outcome, peft_model = fit(inputs, out_dir, target, resume, progress)
        if outcome.stopped == "signal":
            tracker.set_tags({"heal.status": "interrupted", "heal.checkpoint": outcome.checkpoint or ""})
            raise HealingInterrupted(outcome.steps, Path(outcome.checkpoint or out_dir))
        if peft_model is None:
            assert outcome.checkpoint is not None
            peft_model = peft_from_checkpoint(inputs, outcome.checkpoint)
        healing = {"config": cfg.to_dict(), "steps": outcome.steps, "tokens_trained": outcome.tokens,
                   "stopped": outcome.stopped or "completed", "targets": inputs.targets}
        merged, merged_dir, adapter_dir = finish(inputs, peft_model, out_dir, healing)
        ppl_after = perplexities(merged, inputs.eval_sets, cfg.micro_batch, progress)
        result = HealResult(source=inputs.source.describe(), plan=plan.to_dict(), config=cfg.to_dict(),
                            out_dir=str(out_dir), merged_path=str(merged_dir), adapter_path=str(adapter_dir),
                            fit=outcome, ppl_before=ppl_before, ppl_after=ppl_after, ppl_dense=ppl_dense,
                            run_id=run_id, wall_seconds=time.perf_counter() - t_start)
        status = "time_budget" if outcome.stopped == "time" else "completed"
        log_result(tracker, result, status)
        write_summary(result)
    echo(f"[blockprune] healed in {outcome.seconds:.0f} s ({outcome.steps} steps, {outcome.tokens:,} tokens, {status}): "
         + ", ".join(f"{k} {ppl_before[k]:.3f} → {v:.3f}" for k, v in ppl_after.items())
         + f"; merged model: {merged_dir}")
    return result


def precheck_heal(model: str, cfg: HealConfig) -> None:
    """The checks a sweep can run for its ``heal:`` settings before any trial exists (no plan yet, no weights):
    LoRA target names against the model's architecture, the training split against the budget."""
    from transformers import AutoConfig, AutoTokenizer

    resolved = resolve_model(model)
    resolve_targets(AutoConfig.from_pretrained(resolved.path), cfg.lora.targets)
    tok = AutoTokenizer.from_pretrained(resolved.path)
    train = training_windows(tok, [load_corpus(c, cfg.text_field) for c in cfg.corpora], cfg.seq_len)
    check_budget(train, cfg.total_steps, cfg.batch_size, cfg.seq_len)


def heal_plan(plan: Any, model: str, cfg: HealConfig, out_dir: str | Path, **kwargs: Any) -> HealResult:
    """Heal ``plan`` applied to ``model`` (what a sweep trial does after selection); ``kwargs`` go to :func:`heal`
    (``tracker``, ``parent_run_id`` = the trial's run id, ``dense``, ``progress``, ``fit``)."""
    from blockprune.healing.source import resolve_source

    return heal(prepare_heal(resolve_source(plan=plan, model=model), cfg), out_dir, **kwargs)


__all__ = ["FitOutcome", "HealInputs", "HealResult", "HealingInterrupted", "adapter_state", "check_devices",
           "dense_perplexities", "finish", "fit_lora", "heal", "heal_plan", "last_checkpoint", "local_fit", "merge_from_checkpoint",
           "peft_from_checkpoint", "perplexities", "precheck_heal", "prepare_heal", "write_summary"]
