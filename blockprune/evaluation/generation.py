"""Greedy completions of fixed prompts, to look at what pruning does to a model's text.

Why: perplexity and accuracy can hide failure modes that a human spots at once (repetition loops,
broken syntax, wrong language). The same prompts and greedy decoding make samples of two plans
directly comparable, and reproducible run to run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

DEFAULT_PROMPTS: tuple[str, ...] = (
    "The capital of France is",
    "Water boils at a temperature of",
    "Once upon a time, in a small village,",
    "def fibonacci(n):",
    "The three primary colours are",
    "Photosynthesis is the process by which",
)


@torch.inference_mode()
def generate_samples(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    max_new_tokens: int = 32,
) -> list[dict[str, Any]]:
    """Greedy continuation of each prompt (one at a time, so no padding affects the result).

    Returns one dict per prompt: ``prompt``, ``completion`` (new text only), ``new_tokens``,
    ``stopped_at_eos`` and ``seconds``.
    """
    from transformers import GenerationConfig

    if isinstance(prompts, str):
        prompts = [prompts]
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    # A fresh config, so sampling defaults shipped with the model (temperature, top_p) never apply.
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad, num_beams=1
    )
    was_training = model.training
    model.eval()
    samples = []
    try:
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt").to(device)
            start = time.perf_counter()
            out = model.generate(**enc, generation_config=config)
            seconds = time.perf_counter() - start
            new = out[0, enc["input_ids"].shape[1] :]
            samples.append(
                {
                    "prompt": prompt,
                    "completion": tokenizer.decode(new, skip_special_tokens=True),
                    "new_tokens": int(new.numel()),
                    "stopped_at_eos": bool(eos is not None and new.numel() > 0 and int(new[-1]) == eos),
                    "seconds": seconds,
                }
            )
    finally:
        model.train(was_training)
    return samples
