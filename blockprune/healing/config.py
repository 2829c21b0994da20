"""Healing settings: frozen, validated on construction, free of torch so specs and CLIs can build them cheaply.

The batch is a *global* setting (windows per optimizer step, over all devices): the budget in tokens,
the learning-rate schedule and the result do not change when the same run moves from one process to
a Ray cluster. How a global batch is split into micro-batches × gradient accumulation × devices is
decided at run time (:meth:`HealConfig.accumulation`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from blockprune.errors import BadInputError

PRECISIONS = ("auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed")


@dataclass(frozen=True)
class LoraSettings:
    """PEFT LoRA on the decoder's linear projections; ``targets`` empty = every projection of a layer."""

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0  # 0: the result does not depend on how many devices drew dropout masks
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise BadInputError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise BadInputError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        object.__setattr__(self, "targets", tuple(self.targets))


@dataclass(frozen=True)
class HealConfig:
    """What a healing run trains on, for how long, and how.

    ``steps`` or ``tokens`` sets the budget (``tokens`` wins when given: steps = ⌈tokens / tokens per
    step⌉); ``minutes`` additionally stops early on wall time, leaving the schedule unfinished.
    Training windows come only from the training split of ``corpora`` (never the held-out documents);
    validation and the before/after perplexities use the held-out split.
    """

    corpora: tuple[str, ...] = ("wikipedia",)
    eval_corpora: tuple[str, ...] = ()  # default: corpora
    text_field: str | None = None
    seq_len: int = 256
    batch_size: int = 8  # windows per optimizer step, all devices together
    micro_batch: int = 4  # windows per forward pass on one device
    steps: int = 200
    tokens: int | None = None
    minutes: float | None = None
    lr: float = 2e-4
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine decay ends at lr × this
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    val_every: int = 50  # optimizer steps between validation perplexities; 0 = never
    val_windows: int = 4  # held-out windows per corpus for the validation curve
    eval_windows: int = 16  # held-out windows per corpus for perplexity before/after
    ckpt_every: int = 25  # optimizer steps between checkpoints
    precision: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "corpora", tuple(self.corpora))
        object.__setattr__(self, "eval_corpora", tuple(self.eval_corpora))
        if not self.corpora:
            raise BadInputError("healing needs at least one training corpus")
        if self.seq_len < 8:
            raise BadInputError(f"--seq-len must be >= 8, got {self.seq_len}")
        if self.batch_size < 1 or self.micro_batch < 1:
            raise BadInputError(f"batch sizes must be >= 1, got batch {self.batch_size}, micro-batch {self.micro_batch}")
        if self.tokens is not None and self.tokens < 1:
            raise BadInputError(f"--tokens must be >= 1, got {self.tokens}")
        if self.tokens is None and self.steps < 1:
            raise BadInputError(f"--steps must be >= 1, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise BadInputError(f"--minutes must be > 0, got {self.minutes}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise BadInputError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.val_every < 0 or self.ckpt_every < 1:
            raise BadInputError("warmup_steps and val_every must be >= 0, ckpt_every >= 1")
        if self.val_windows < 1 or self.eval_windows < 1:
            raise BadInputError("val_windows and eval_windows must be >= 1")
        if self.precision not in PRECISIONS:
            raise BadInputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (the LR schedule's length)."""
        if self.tokens is not None:
            return math.ceil(self.tokens / self.tokens_per_step)
        return self.steps

    @property
    def budget_tokens(self) -> int:
        """Input tokens (BOS included) the full schedule consumes; each training window is used at most once."""
        return self.total_steps * self.tokens_per_step

    @property
    def evaluation_corpora(self) -> tuple[str, ...]:
        return self.eval_corpora or self.corpora

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each device, so that micro × accumulation × devices = batch."""
        per_step = self.micro_batch * world_size
        if self.batch_size % per_step:
            raise BadInputError(
                f"the global batch ({self.batch_size} windows) is not a multiple of micro-batch {self.micro_batch} × "
                f"{world_size} device(s); change --batch-size or --micro-batch"
            )
        return self.batch_size // per_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HealConfig:
        d = dict(d)
        lora = LoraSettings(**(d.pop("lora", None) or {}))
        return cls(**d, lora=lora)

    # The short keys a sweep/study spec uses: ``heal: {steps: 200, lr: 2e-4, rank: 16}``.
    SPEC_KEYS = {"steps", "tokens", "minutes", "lr", "warmup", "rank", "alpha", "dropout", "targets", "corpus",
                 "corpora", "eval_corpora", "seq_len", "batch_size", "micro_batch", "val_every", "val_windows",
                 "eval_windows", "seed", "precision", "grad_clip", "weight_decay", "gradient_checkpointing"}

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | None, base: HealConfig | None = None) -> HealConfig:
        """A config from a spec's ``heal:`` mapping; unknown keys are refused and listed."""
        base = base or cls()
        spec = dict(spec or {})
        unknown = sorted(set(spec) - cls.SPEC_KEYS)
        if unknown:
            raise BadInputError(f"unknown key(s) {unknown} in heal:; allowed: {', '.join(sorted(cls.SPEC_KEYS))}")
        lora = base.lora
        lora_keys = {"rank": "rank", "alpha": "alpha", "dropout": "dropout", "targets": "targets"}
        lora_kw = {v: spec.pop(k) for k, v in lora_keys.items() if k in spec}
        if "targets" in lora_kw and isinstance(lora_kw["targets"], str):
            lora_kw["targets"] = tuple(t for t in lora_kw["targets"].split(",") if t)
        if lora_kw:
            lora = replace(lora, **lora_kw)
        if "corpus" in spec:
            spec["corpora"] = (spec.pop("corpus"),)
        if "warmup" in spec:
            spec["warmup_steps"] = spec.pop("warmup")
        for key in ("corpora", "eval_corpora"):
            if isinstance(spec.get(key), str):
                spec[key] = tuple(c for c in spec[key].split(",") if c)
        return replace(base, **spec, lora=lora)
