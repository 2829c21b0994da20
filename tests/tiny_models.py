"""Tiny random-weight models of every supported family, for shape and wiring tests (no weights needed).

Gemma3, Qwen2 and Mistral get a 4-token sliding window, shorter than the tests' windows, so the
sliding-window code paths run too.
"""

from __future__ import annotations

from typing import Any

import torch

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma3", "gpt2"]
TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128)


def tiny_model(family: str) -> Any:
    """A 6-layer model of ``family`` with seeded random weights, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    if family == "gpt2":
        cfg = GPT2Config(vocab_size=97, n_embd=32, n_layer=6, n_head=4, n_positions=128)
    elif family == "gemma3":
        cfg = AutoConfig.for_model("gemma3_text", **TINY, head_dim=8, sliding_window=4, layer_types=None)
    elif family == "qwen2":
        cfg = AutoConfig.for_model("qwen2", **TINY, use_sliding_window=True, sliding_window=4, max_window_layers=3)
    elif family == "mistral":
        cfg = AutoConfig.for_model("mistral", **TINY, sliding_window=4)
    else:
        cfg = AutoConfig.for_model(family, **TINY)
    return AutoModelForCausalLM.from_config(cfg).eval()
