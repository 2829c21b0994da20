"""Parameter counts, FLOPs per token, latency and greedy samples, on the real SmolLM2-135M.

Generation samples are tested here too: they are reported next to the cost numbers.
"""

from __future__ import annotations

import copy
import statistics
from typing import Any

import pytest

from blockprune.evaluation.cost import (
    LatencyResult,
    count_parameters,
    decode_flops_per_token,
    flops_per_token,
    measure_latency,
    prefill_flops_per_token,
)
from blockprune.evaluation.generation import DEFAULT_PROMPTS, generate_samples


def _tiny_llama(tied: bool) -> Any:
    """A real (randomly initialised) Llama with small shapes, to check counts by hand."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=100,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return AutoModelForCausalLM.from_config(config)


def _drop_layers(model: Any, drop: list[int]) -> Any:
    """Remove decoder layers through the real code path."""
    from blockprune.models.apply import apply_plan
    from blockprune.selection.plan import PrunePlan

    return apply_plan(model, PrunePlan(model_id="tiny", n_blocks=len(model.model.layers), blocks=tuple(drop)))


@pytest.mark.unit
@pytest.mark.parametrize("tied", [True, False])
def test_count_parameters_by_hand(tied: bool) -> None:
    model = _tiny_llama(tied)
    d, v, ff, n_layers, kv = 16, 100, 32, 3, 2 * 4  # kv width = kv heads · head_dim
    layer = d * d + 2 * d * kv + d * d + 3 * d * ff + 2 * d  # q, k+v, o, mlp, two norms
    embedding = v * d
    total = embedding + n_layers * layer + d + (0 if tied else v * d)
    counts = count_parameters(model)
    assert counts["total"] == total == sum(p.numel() for p in model.parameters())
    assert counts["embedding"] == embedding
    assert counts["lm_head"] == v * d
    assert counts["tied_lm_head"] is tied
    assert counts["per_token"] == total - embedding  # includes the head only when untied
    assert counts["per_token_matmul"] == n_layers * layer + d + v * d  # the head's matmul always runs
    assert counts["n_layers"] == n_layers


@pytest.mark.unit
def test_flops_per_token_counts_layers_and_context() -> None:
    model = _tiny_llama(tied=True)
    base = flops_per_token(model, context=0)
    assert base == 2 * count_parameters(model)["per_token_matmul"]
    assert flops_per_token(model, context=10) - base == 4 * 3 * 10 * 16
    pruned = _drop_layers(copy.deepcopy(model), [1])
    layer_params = sum(p.numel() for p in model.model.layers[1].parameters())
    assert base - flops_per_token(pruned, context=0) == 2 * layer_params


@pytest.mark.unit
def test_prefill_and_decode_flops() -> None:
    model = _tiny_llama(tied=True)
    head = 2 * 100 * 16  # vocab × hidden, one multiply-add = 2 FLOPs
    attn = 4 * 3 * 16  # per attended position
    body = flops_per_token(model, context=0, lm_head=False)
    assert flops_per_token(model, context=0) - body == head
    # prefill of 4 tokens: logits only for the last one, mean causal context 2.5
    assert prefill_flops_per_token(model, 4) == pytest.approx(body + attn * 2.5 + head / 4)
    # 3 tokens after a prompt of 4 attend to 5, 6, 7 positions
    assert decode_flops_per_token(model, 4, 3) == pytest.approx(body + head + attn * 6)


@pytest.mark.integration
def test_smollm2_counts(smollm2: tuple[Any, Any]) -> None:
    model, _ = smollm2
    counts = count_parameters(model)
    assert counts["total"] == pytest.approx(134.5e6, rel=0.01)
    assert counts["tied_lm_head"] is True
    assert counts["embedding"] == 49152 * 576
    assert counts["per_token"] == counts["total"] - counts["embedding"]
    assert counts["per_token_matmul"] == counts["total"]
    assert counts["n_layers"] == 30


@pytest.mark.integration
def test_measure_latency_on_smollm2(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    res = measure_latency(model, tok, prompt_len=32, gen_len=4, repeats=2, warmup=1)
    assert isinstance(res, LatencyResult)
    assert (res.prompt_len, res.gen_len, res.repeats) == (32, 4, 2)
    assert len(res.prefill_s_all) == len(res.decode_s_all) == 2
    assert res.prefill_tokens_per_s > 0 and res.decode_tokens_per_s > 0
    assert res.prefill_s == statistics.median(res.prefill_s_all)
    assert res.decode_s == statistics.median(res.decode_s_all)
    assert res.memory_kind == "rss_peak"
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert res.peak_memory_bytes > weights  # RSS includes the fp32 weights
    assert res.to_dict()["device"] == "cpu"
    assert model.training is False


@pytest.mark.integration
def test_measure_latency_rejects_bad_sizes(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, tok, repeats=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        measure_latency(model, tok, prompt_len=10**6, gen_len=1)


@pytest.mark.integration
def test_greedy_samples_are_deterministic(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    prompts = DEFAULT_PROMPTS[:2]
    a = generate_samples(model, tok, prompts=prompts, max_new_tokens=8)
    b = generate_samples(model, tok, prompts=prompts, max_new_tokens=8)
    assert [s["prompt"] for s in a] == list(prompts)
    assert [s["completion"] for s in a] == [s["completion"] for s in b]
    assert all(1 <= s["new_tokens"] <= 8 and s["completion"].strip() for s in a)
    assert "paris" in a[0]["completion"].lower()  # "The capital of France is" → Paris
