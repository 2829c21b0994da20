"""LoRA adapters (PEFT) on a pruned model: which projections exist, wrapping, and merging back.

Target names are checked against the model's own decoder layers, built from the config on the meta
device (no weights), so a typo fails in milliseconds with the list of valid names. The adapter state is
the trainable LoRA tensors only; :func:`merge_adapter` puts such a state onto a fresh copy of the base
and folds it into the weights, which is how a Ray run's result (read from its checkpoint) and an
in-process run's result are merged by the same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from blockprune.errors import BadInputError
from blockprune.healing.config import LoraSettings
from blockprune.models.adapters import adapter_for_config


class UnknownTargetModuleError(BadInputError):
    """A LoRA target that names no linear projection of the model's decoder layers."""


def projection_names(config: Any) -> list[str]:
    """Names (last path component) of the linear projections inside the decoder layers: q_proj, up_proj, …"""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = _plain_config(config)
    with init_empty_weights(include_buffers=True):
        model = AutoModelForCausalLM.from_config(config)
    layers = adapter_for_config(config).layers(model)
    return sorted({name.rsplit(".", 1)[-1] for name, m in layers.named_modules()
                   if isinstance(m, (nn.Linear, Conv1D)) and name})


def _plain_config(config: Any) -> Any:
    """A copy without blockprune's extra keys, so ``from_config`` builds the stock architecture."""
    import copy

    config = copy.deepcopy(config)
    for key in ("blockprune_plan", "blockprune_source", "blockprune_healing", "kv_sharing_modes"):
        if hasattr(config, key):
            delattr(config, key)
    return config


def resolve_targets(config: Any, targets: Sequence[str]) -> list[str]:
    """The target names to adapt; empty = all projections. Unknown names raise :class:`UnknownTargetModuleError`."""
    known = projection_names(config)
    if not targets:
        return known
    unknown = [t for t in targets if t not in known]
    if unknown:
        model_type = getattr(config, "model_type", "?")
        raise UnknownTargetModuleError(
            f"unknown LoRA target module(s) {unknown} for a {model_type} model; its decoder projections are: "
            f"{', '.join(known)}"
        )
    return list(dict.fromkeys(targets))


def lora_config(settings: LoraSettings, targets: Sequence[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=list(targets), bias="none", task_type="CAUSAL_LM")


def wrap_lora(model: Any, settings: LoraSettings, targets: Sequence[str]) -> Any:
    """The PEFT model: base weights frozen, LoRA A (seeded by the caller) and B = 0, so it starts equal to ``model``."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(settings, targets))


def adapter_state(peft_model: Any) -> dict[str, torch.Tensor]:
    """The trainable LoRA tensors, under PEFT's own names (detached CPU copies)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()}


def merge_adapter(base: Any, settings: LoraSettings, targets: Sequence[str], state: Mapping[str, torch.Tensor]) -> Any:
    """Fold an adapter state into ``base`` (modified in place) and return the plain model.

    The merged weights are W + (alpha / r)·B·A, so the model's logits equal the adapter model's up to
    float rounding (tested ≤ 1e-5).
    """
    from peft import set_peft_model_state_dict

    peft_model = wrap_lora(base, settings, targets)
    result = set_peft_model_state_dict(peft_model, dict(state))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise BadInputError(f"the adapter holds tensors this model has no place for: {unexpected[:4]}")
    return peft_model.merge_and_unload()


def trainable_summary(peft_model: Any) -> dict[str, int]:
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    return {"trainable_params": trainable, "total_params": total}
