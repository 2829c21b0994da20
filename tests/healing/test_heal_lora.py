"""LoRA merge is exact (≤ 1e-5 on logits) and healed checkpoints reload the way their pruned input did."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from blockprune.healing.config import LoraSettings
from blockprune.healing.lora import (
    UnknownTargetModuleError,
    adapter_state,
    merge_adapter,
    projection_names,
    resolve_targets,
    wrap_lora,
)
from blockprune.healing.source import HEALING_KEY, resolve_source, save_healed
from blockprune.models.apply import load_pruned

pytestmark = pytest.mark.unit
SETTINGS = LoraSettings(rank=4, alpha=8.0)


def _ids(tokenizer: Any) -> torch.Tensor:
    return tokenizer(["The history of the city of Paris begins with", "A quick brown fox jumps over the dog"],
                     return_tensors="pt", padding=True).input_ids


def _trained_adapter(path: Path) -> tuple[Any, Any]:
    """A PEFT model whose B matrices are random (as after training), so the adapter changes the logits."""
    src = resolve_source(pruned=str(path))
    base, tok = src.load()
    targets = resolve_targets(src.config, ())
    peft_model = wrap_lora(base, SETTINGS, targets)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return src, peft_model.eval()


@pytest.mark.parametrize("which", ["tiny_pruned", "tiny_pruned_attention"])
def test_merged_weights_reproduce_adapter_logits_and_reload_identically(which: str, request: pytest.FixtureRequest,
                                                                        tokenizer: Any, tmp_path: Path) -> None:
    path = request.getfixturevalue(which)
    src, peft_model = _trained_adapter(path)
    ids = _ids(tokenizer)
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
    assert (adapted - plain).abs().max() > 1e-2  # the adapter matters, so equality below means something
    state = adapter_state(peft_model)
    fresh, _ = src.load()
    merged = merge_adapter(fresh, SETTINGS, resolve_targets(src.config, ()), state).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        merged_logits = merged(input_ids=ids).logits
    assert (merged_logits - adapted).abs().max() <= 1e-5
    out = save_healed(merged, src.plan, tmp_path / "healed", tokenizer, {"steps": 0})
    if src.plan.granularity == "layer":  # stock transformers, nothing of blockprune's
        from transformers import AutoModelForCausalLM

        reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        assert len(reloaded.model.layers) == 4
    else:
        reloaded = load_pruned(out)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, merged_logits)
    assert getattr(reloaded.config, HEALING_KEY) == {"steps": 0}
    assert resolve_source(pruned=str(out)).plan == src.plan  # a healed model is a valid input again


def test_target_names_come_from_the_architecture(tiny_pruned: Path) -> None:
    cfg = resolve_source(pruned=str(tiny_pruned)).config
    assert projection_names(cfg) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert resolve_targets(cfg, ("q_proj", "v_proj")) == ["q_proj", "v_proj"]
    with pytest.raises(UnknownTargetModuleError, match=r"\['qkv_proj'\].*q_proj"):
        resolve_targets(cfg, ("q_proj", "qkv_proj"))
