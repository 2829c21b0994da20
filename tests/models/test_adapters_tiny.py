"""Shape and wiring tests on tiny random configs of every supported family (no weights needed)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from blockprune.models.adapters import UnsupportedArchitectureError, adapter_for, adapter_for_config
from blockprune.models.apply import SkippedAttention, SkippedMLP, apply_plan, load_pruned, save_pruned
from blockprune.selection.plan import PrunePlan

pytestmark = pytest.mark.unit


def _plan(model, blocks, granularity):
    return PrunePlan(model_id="tiny", n_blocks=len(adapter_for(model).layers(model)), blocks=blocks,
                     granularity=granularity)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("granularity", "blocks"), [("layer", (0, 3)), ("attention", (0, 2, 5)), ("mlp", (1, 4))])
def test_plans_execute_generate_with_cache_and_reload(family: str, granularity: str, blocks, tmp_path) -> None:
    model = tiny_model(family)
    adapter = adapter_for(model)
    before = sum(p.numel() for p in model.parameters())
    layers = adapter.layers(model)
    modules = adapter.attention_modules if granularity == "attention" else adapter.mlp_modules
    expected_drop = sum(
        p.numel()
        for b in blocks
        for name in (modules if granularity != "layer" else [""])
        for p in (getattr(layers[b], name) if name else layers[b]).parameters()
    )
    apply_plan(model, _plan(model, blocks, granularity))
    after = sum(p.numel() for p in model.parameters())
    assert before - after == expected_drop
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        logits = model(ids).logits
        g_cache = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
        g_plain = model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.isfinite(logits).all()
    assert torch.equal(g_cache, g_plain)
    save_pruned(model, model_plan(model), tmp_path)
    reloaded = load_pruned(tmp_path)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, logits, atol=1e-5)
    assert sum(p.numel() for p in reloaded.parameters()) == after


def model_plan(model) -> PrunePlan:
    return PrunePlan.from_dict(model.config.blockprune_plan)


@pytest.mark.parametrize("family", ["gemma3", "qwen2"])
def test_layer_removal_keeps_per_layer_config_aligned(family: str) -> None:
    model = tiny_model(family)
    types = list(model.config.layer_types)
    apply_plan(model, _plan(model, (1, 4), "layer"))
    assert model.config.num_hidden_layers == 4
    assert model.config.layer_types == [types[i] for i in (0, 2, 3, 5)]
    layers = adapter_for(model).layers(model)
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    if family == "qwen2":
        assert model.config.max_window_layers == 2  # of layers 0..2, layers 0 and 2 remain


def test_sub_block_stand_ins_hold_no_weights() -> None:
    model = tiny_model("llama")
    apply_plan(model, _plan(model, (2,), "attention"))
    layer = model.model.layers[2]
    assert isinstance(layer.self_attn, SkippedAttention) and not list(layer.self_attn.parameters())
    assert not any(k.startswith("model.layers.2.self_attn") for k in model.state_dict())
    assert not getattr(model.config, "kv_sharing_modes", None)  # its cache slot is its own (a placeholder)
    model2 = tiny_model("llama")
    apply_plan(model2, _plan(model2, (2,), "mlp"))
    assert isinstance(model2.model.layers[2].mlp, SkippedMLP)


def test_unsupported_architecture_names_supported_ones() -> None:
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("opt", hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32)
    with pytest.raises(UnsupportedArchitectureError, match="opt") as e:
        adapter_for_config(cfg)
    for name in ("llama", "gemma3_text", "qwen2", "mistral", "gpt2"):
        assert name in str(e.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_dropped_attention_slots_count_tokens_and_hold_a_placeholder(family: str) -> None:
    """transformers reads the cache length from slot 0: with attention 0 dropped it must still count, a dropped
    attention's slot holds one value per token, and an incremental forward matches the full one."""
    model = tiny_model(family).eval()
    apply_plan(model, _plan(model, (0, 2), "attention"))
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :9], use_cache=True)
        cache = first.past_key_values
        assert cache.get_seq_length() == 9 and cache.get_seq_length(2) == 9
        layers = cache.layers
        for i in (0, 2):  # one value per token (a sliding-window slot keeps its window's tokens only)
            assert layers[i].keys.shape[1] == 1 and layers[i].keys.shape[-1] == 1 and layers[i].get_seq_length() == 9
        assert layers[1].keys.shape[-1] > 1
        rest = model(ids[:, 9:], past_key_values=cache, use_cache=True).logits
    assert torch.allclose(rest, full[:, 9:], atol=1e-5)
