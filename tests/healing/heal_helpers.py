"""Tiny pruned checkpoints for healing tests (random weights: shape, wiring and equality checks only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from blockprune.healing.config import HealConfig, LoraSettings
from blockprune.selection.plan import PrunePlan

TINY_LAYERS = 6


def smollm2_tokenizer() -> Any:
    """The real SmolLM2 tokenizer (real text → real token ids; only the weights below are random)."""
    from transformers import AutoTokenizer

    from blockprune.models.zoo import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m").path)


def tiny_llama(tokenizer: Any, seed: int = 0) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, tie_word_embeddings=True,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return AutoModelForCausalLM.from_config(cfg).eval()


def save_tiny_pruned(path: Path, tokenizer: Any, granularity: str = "layer", blocks: tuple[int, ...] = (1, 4),
                     model_id: str = "tiny-llama") -> Path:
    from blockprune.models.apply import apply_plan, save_pruned

    model = tiny_llama(tokenizer)
    plan = PrunePlan(model_id=model_id, n_blocks=TINY_LAYERS, blocks=blocks, granularity=granularity)  # type: ignore[arg-type]
    apply_plan(model, plan)
    return save_pruned(model, plan, path, tokenizer)


def tiny_config(**overrides: Any) -> HealConfig:
    """4 windows × 64 tokens per step, 2 per micro-batch (accumulation 2 on one device)."""
    base = dict(corpora=("lee-news",), seq_len=64, batch_size=4, micro_batch=2, steps=6, lr=5e-3, warmup_steps=2,
                val_every=3, val_windows=2, eval_windows=2, ckpt_every=2, lora=LoraSettings(rank=4, alpha=8.0))
    base.update(overrides)
    return HealConfig(**base)
