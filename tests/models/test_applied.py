"""`applied(model, plan)`: a plan in place for a `with` block, the model restored bit for bit after it.

Checked against `apply_plan` on a deep copy (the pipeline's old way) on real smollm2 and gemma3
(sliding-window `layer_types`) and a tiny random Qwen2 config (sliding window, `max_window_layers`).
"""

from __future__ import annotations

import copy

import pytest
import torch

from blockprune.models.adapters import adapter_for
from blockprune.models.apply import PlanAlreadyAppliedError, applied, apply_plan
from blockprune.selection.plan import PrunePlan

PLANS = [("layer", (1, 3)), ("attention", (0, 2, 4)), ("mlp", (1, 5))]
REAL_PLANS = {
    "smollm2": [("layer", (11, 14, 17, 20)), ("attention", (3, 8, 13)), ("mlp", (5, 20))],
    "gemma3": [("layer", (4, 5, 9, 13)), ("attention", (0, 5, 11)), ("mlp", (3, 12))],  # 5, 11: global layers
}


def _plan(model, blocks, granularity, model_id="tiny", revision=None) -> PrunePlan:
    return PrunePlan(model_id=model_id, revision=revision, n_blocks=len(adapter_for(model).layers(model)),
                     blocks=blocks, granularity=granularity)


def _logits(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, use_cache=False).logits


def _greedy(model, ids) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(ids, max_new_tokens=8, do_sample=False, use_cache=True,
                              pad_token_id=model.config.eos_token_id)


def _weights(model) -> dict[str, int]:
    return {name: p.data_ptr() for name, p in model.state_dict(keep_vars=True).items()}


def _check_round_trip(model, plan, ids, generate: bool) -> None:
    before = _logits(model, ids)
    generated = _greedy(model, ids) if generate else None
    config_before = model.config.to_dict()
    weights_before = _weights(model)
    reference = apply_plan(copy.deepcopy(model), plan)
    with applied(model, plan) as pruned:
        assert pruned is model
        assert torch.equal(_logits(pruned, ids), _logits(reference, ids))
        assert pruned.config.to_dict() == reference.config.to_dict()
        if generate:
            assert torch.equal(_greedy(pruned, ids), _greedy(reference, ids))
        n = len(adapter_for(model).layers(model))
        assert n == plan.n_blocks - (len(plan.blocks) if plan.granularity == "layer" else 0)
    assert torch.equal(_logits(model, ids), before)
    assert model.config.to_dict() == config_before
    assert _weights(model) == weights_before  # same tensors: nothing copied, nothing lost
    layers = adapter_for(model).layers(model)
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(plan.n_blocks))  # KV-cache slots back
    if generate:
        assert torch.equal(_greedy(model, ids), generated)


def tiny_qwen2():
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, use_sliding_window=True, sliding_window=4,
                      max_window_layers=3)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.unit
@pytest.mark.parametrize(("granularity", "blocks"), PLANS)
def test_tiny_qwen2_round_trip(granularity, blocks) -> None:
    model = tiny_qwen2()
    assert model.config.layer_types.count("sliding_attention") == 3  # the config under test has mixed layers
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    _check_round_trip(model, _plan(model, blocks, granularity), ids, generate=True)


@pytest.mark.unit
def test_restores_after_an_error_and_refuses_nesting() -> None:
    model = tiny_qwen2()
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(2))
    before = _logits(model, ids)
    plan = _plan(model, (0, 5), "layer")
    with pytest.raises(RuntimeError, match="inside"), applied(model, plan):
        assert model.config.num_hidden_layers == 4
        raise RuntimeError("failure inside the block")
    assert model.config.num_hidden_layers == 6 and not hasattr(model.config, "blockprune_plan")
    assert torch.equal(_logits(model, ids), before)
    with applied(model, plan), pytest.raises(PlanAlreadyAppliedError), applied(model, _plan(model, (1,), "mlp")):
        pass
    assert torch.equal(_logits(model, ids), before)


@pytest.mark.integration
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_real_models_round_trip(which, request, ids_for) -> None:
    loaded = request.getfixturevalue(which)
    model = loaded.fresh()
    ids = ids_for(loaded.tokenizer)
    for granularity, blocks in REAL_PLANS[which]:
        plan = _plan(model, blocks, granularity, loaded.resolved.name, loaded.resolved.revision)
        _check_round_trip(model, plan, ids, generate=False)
