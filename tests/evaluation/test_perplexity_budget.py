"""Chunk perplexity with the logits budget: fewer windows per forward and a sliced log-softmax, same value."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blockprune.calibration.windows import TokenWindows
from blockprune.evaluation.perplexity import chunk_perplexity

pytestmark = pytest.mark.unit


def test_budget_and_slices_do_not_change_the_value() -> None:
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=3001, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = np.random.default_rng(0).integers(0, 3001, size=(5, 150))  # 149 targets: 3 slices, the last partial
    windows = TokenWindows(input_ids=ids, starts=np.arange(5) * 150, has_bos=False)
    with torch.inference_mode():
        logits = model(torch.from_numpy(ids)).logits[:, :-1]
        expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 3001), torch.from_numpy(ids[:, 1:]).reshape(-1))
    whole = chunk_perplexity(model, windows, batch_size=4, progress=False)  # batches of 4 fit the default budget
    one_by_one = chunk_perplexity(model, windows, batch_size=4, progress=False, logits_budget=1)
    for res in (whole, one_by_one):
        assert res.perplexity == pytest.approx(math.exp(expected.item()), rel=1e-5)
        assert res.n_tokens == 5 * 149
