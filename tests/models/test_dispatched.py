"""Plans on a model dispatched by accelerate over several devices (here: CPU + disk offload)."""

from __future__ import annotations

import pytest
import torch

from blockprune.models.apply import apply_plan
from blockprune.selection.plan import PrunePlan

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("granularity", ["layer", "attention"])
def test_plan_on_dispatched_model_matches_plain_model(smollm2, tmp_path, ids_for, granularity) -> None:
    from accelerate import dispatch_model

    plan = PrunePlan(model_id="smollm2-135m", revision=smollm2.resolved.revision, n_blocks=30,
                     blocks=(3, 10, 11, 20), granularity=granularity)
    ids = ids_for(smollm2.tokenizer)
    plain = apply_plan(smollm2.fresh(), plan)
    with torch.no_grad():
        expected = plain(ids).logits
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.layers.{i}": ("cpu" if i < 15 else "disk") for i in range(30)}
    model = dispatch_model(smollm2.fresh(), device_map=device_map, offload_dir=str(tmp_path))
    assert any(hasattr(m, "_hf_hook") for m in model.modules()), "accelerate hooks expected"
    apply_plan(model, plan)
    with torch.no_grad():
        got = model(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if granularity == "layer":
        layer_keys = [k for k in model.hf_device_map if k.startswith("model.layers.")]
        assert layer_keys == [f"model.layers.{i}" for i in range(26)]
        # layers 0..14 lived on the CPU; 3, 10 and 11 were removed, so new 0..11 are CPU, new 12 (old 15) disk
        assert model.hf_device_map["model.layers.11"] == "cpu" and model.hf_device_map["model.layers.12"] == "disk"
