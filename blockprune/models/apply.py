"""Execute a PrunePlan on a loaded model, and save/reload the result.

- ``layer``: decoder layers are removed from the ModuleList; every remaining attention gets its
  new ``layer_idx`` (KV-cache slot), and per-layer config lists follow the layers.
- ``attention`` / ``mlp``: the sub-block and its norms are replaced by parameterless stand-ins
  that add nothing to the residual stream, so their compute is skipped and their weights leave
  the state dict. A dropped attention still writes its cache slot, one value per token (a real
  layer holds 2 × heads × head_dim), so every slot counts the tokens seen and stock ``generate``
  finds the sequence length and masks on any layer (slot 0 included) whatever the transformers version.

The plan is recorded in ``config.blockprune_plan``; applying a second plan is refused.

:func:`applied` does the same for the duration of a ``with`` block and then restores the model
exactly, sharing every weight: one loaded model evaluates many plans without a deep copy each.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from blockprune.errors import BadInputError
from blockprune.models.adapters import Adapter, adapter_for, adapter_for_config, text_config
from blockprune.selection.plan import PrunePlan

log = logging.getLogger(__name__)
PLAN_FILE = "blockprune_plan.json"


class PlanMismatchError(BadInputError):
    """The plan was made for another model, revision or layer count."""


class PlanAlreadyAppliedError(RuntimeError):
    """The model already carries a plan."""


class SkippedAttention(nn.Module):
    """Stands in for a removed attention sub-block: contributes zero to the residual stream.

    With a KV cache it appends a placeholder of one value per token (one head of width 1) to its own slot,
    so the slot's length still counts the tokens: transformers reads the cache length from slot 0 (and
    masks from a full-attention slot), counts an empty slot as length 0, and since 5.25 no longer skips
    slots that hold nothing."""

    def __init__(self, layer_idx: int | None = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> tuple:
        if hidden_states is None:
            hidden_states = args[0] if args else next(v for v in kwargs.values() if torch.is_tensor(v))
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and self.layer_idx is not None and hasattr(cache, "update"):
            placeholder = hidden_states.new_zeros((hidden_states.shape[0], 1, hidden_states.shape[-2], 1))
            cache.update(placeholder, placeholder, self.layer_idx)
        return hidden_states.new_zeros(()), None  # a 0-dim zero broadcasts in the residual add


class SkippedMLP(nn.Module):
    """Stands in for a removed MLP sub-block."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states.new_zeros(())


def record_source(model: Any, model_id: str, revision: str | None) -> None:
    """Remember which weights a model came from, so plans for other models are refused."""
    model.config.blockprune_source = {"model_id": model_id, "revision": revision}


def _check(model: Any, adapter: Adapter, plan: PrunePlan) -> None:
    cfg = model.config
    if getattr(cfg, "blockprune_plan", None):
        prev = cfg.blockprune_plan
        raise PlanAlreadyAppliedError(
            f"this model was already pruned ({prev.get('granularity')} plan, blocks {prev.get('blocks')}); "
            "apply plans to the original model"
        )
    source = getattr(cfg, "blockprune_source", None)
    if source:
        if source.get("model_id") != plan.model_id:
            raise PlanMismatchError(f"plan is for model {plan.model_id!r}, this model is {source.get('model_id')!r}")
        if plan.revision is not None and source.get("revision") not in (None, plan.revision):
            raise PlanMismatchError(
                f"plan is for revision {plan.revision!r} of {plan.model_id!r}, this model is {source.get('revision')!r}"
            )
    n = len(adapter.layers(model))
    if plan.n_blocks != n:
        raise PlanMismatchError(f"plan is for a model with {plan.n_blocks} layers, this model has {n}")


def apply_plan(model: Any, plan: PrunePlan) -> Any:
    """Prune ``model`` in place according to ``plan`` and return it."""
    adapter = adapter_for(model)
    _check(model, adapter, plan)
    if plan.granularity == "layer":
        _remove_layers(model, adapter, plan.blocks)
    else:
        _skip_sublayers(model, adapter, plan.blocks, plan.granularity)
    model.config.blockprune_plan = plan.to_dict()
    return model


_CONFIG_KEYS_TOUCHED = ("blockprune_plan", "max_window_layers")
_ABSENT = object()


@dataclass
class _Snapshot:
    """Everything :func:`apply_plan` may change, held by reference (weights are never copied)."""

    layers: Any
    submodules: list[dict[str, Any]]
    layer_idx: list[tuple[Any, Any, Any, Any]]
    config_values: list[tuple[Any, str, Any]]
    device_map: Any


def _snapshot(model: Any, adapter: Adapter) -> _Snapshot:
    layers = adapter.layers(model)
    names = set(adapter.attention_modules) | set(adapter.mlp_modules)
    submodules = [{n: getattr(layer, n) for n in names if hasattr(layer, n)} for layer in layers]
    idx = []
    for layer in layers:
        attn = getattr(layer, adapter.attention, None)
        idx.append((layer, getattr(layer, "layer_idx", _ABSENT), attn, getattr(attn, "layer_idx", _ABSENT)))
    configs = [model.config] + ([text_config(model.config)] if text_config(model.config) is not model.config else [])
    keys = (*_CONFIG_KEYS_TOUCHED, adapter.n_layers_attr, *adapter.per_layer_config_lists)
    values = [(cfg, key, _copy(cfg.__dict__.get(key, _ABSENT))) for cfg in configs for key in keys]
    return _Snapshot(layers, submodules, idx, values, _copy(getattr(model, "hf_device_map", _ABSENT)))


def _copy(value: Any) -> Any:
    """A shallow copy of a config value (lists are replaced, not mutated, but be safe); the sentinel as is."""
    return value if value is _ABSENT else copy.copy(value)


def _restore(model: Any, adapter: Adapter, snap: _Snapshot) -> None:
    adapter.set_layers(model, snap.layers)
    for layer, modules in zip(snap.layers, snap.submodules, strict=True):
        for name, module in modules.items():
            setattr(layer, name, module)
    for layer, layer_idx, attn, attn_idx in snap.layer_idx:
        if layer_idx is not _ABSENT:
            layer.layer_idx = layer_idx
        if attn is not None and attn_idx is not _ABSENT:
            attn.layer_idx = attn_idx
    for cfg, key, value in snap.config_values:
        if value is _ABSENT:
            cfg.__dict__.pop(key, None)
        else:
            setattr(cfg, key, value)
    if snap.device_map is not _ABSENT:
        model.hf_device_map = snap.device_map


@contextmanager
def applied(model: Any, plan: PrunePlan) -> Iterator[Any]:
    """``with applied(model, plan) as pruned:`` — the plan applied in place, undone exactly on exit.

    Inside the block the model is what :func:`apply_plan` makes of it (layers removed and
    re-indexed, config lists shortened, or sub-blocks replaced); on exit, also after an error, the
    original layer list, sub-modules, ``layer_idx`` values, config attributes and device map are put
    back. No weight is copied or modified, so logits after the block equal those before it bit for bit
    and many plans can be evaluated on one loaded model.
    """
    adapter = adapter_for(model)
    _check(model, adapter, plan)  # before the snapshot: a refused plan leaves nothing to undo
    snap = _snapshot(model, adapter)
    try:
        apply_plan(model, plan)
        yield model
    finally:
        _restore(model, adapter, snap)


def _remove_layers(model: Any, adapter: Adapter, blocks: tuple[int, ...]) -> None:
    layers = adapter.layers(model)
    drop = set(blocks)
    kept = [i for i in range(len(layers)) if i not in drop]
    new_layers = nn.ModuleList([layers[i] for i in kept])
    for new_idx, layer in enumerate(new_layers):
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
        attn = getattr(layer, adapter.attention, None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx
    adapter.set_layers(model, new_layers)
    cfg = text_config(model.config)
    old_n = adapter.n_layers(model.config)
    setattr(cfg, adapter.n_layers_attr, len(kept))
    for key in adapter.per_layer_config_lists:
        values = getattr(cfg, key, None)
        if isinstance(values, (list, tuple)) and len(values) == old_n:
            setattr(cfg, key, [values[i] for i in kept])
    if isinstance(getattr(cfg, "max_window_layers", None), int):  # Qwen2: first N layers use full attention
        cfg.max_window_layers = sum(1 for i in kept if i < cfg.max_window_layers)
    _renumber_device_map(model, adapter, kept)


def _renumber_device_map(model: Any, adapter: Adapter, kept: list[int]) -> None:
    dmap = getattr(model, "hf_device_map", None)
    if not dmap:
        return
    prefix = adapter.layers_path + "."
    new_index = {old: new for new, old in enumerate(kept)}
    out = {}
    for key, dev in dmap.items():
        if key.startswith(prefix):
            idx, _, rest = key[len(prefix):].partition(".")
            if not idx.isdigit() or int(idx) not in new_index:
                continue
            key = f"{prefix}{new_index[int(idx)]}" + (f".{rest}" if rest else "")
        out[key] = dev
    model.hf_device_map = out


def skip_sublayer(layer: Any, adapter: Adapter, granularity: str) -> None:
    """Replace one layer's attention or MLP sub-block (and its norms) by stand-ins that add nothing."""
    main, modules = (
        (adapter.attention, adapter.attention_modules)
        if granularity == "attention"
        else (adapter.mlp, adapter.mlp_modules)
    )
    for name in modules:
        if name == main:
            if granularity == "attention":
                idx = getattr(getattr(layer, name, None), "layer_idx", getattr(layer, "layer_idx", None))
                setattr(layer, name, SkippedAttention(idx if isinstance(idx, int) else None))
            else:
                setattr(layer, name, SkippedMLP())
        else:
            setattr(layer, name, nn.Identity())


def _skip_sublayers(model: Any, adapter: Adapter, blocks: tuple[int, ...], granularity: str) -> None:
    layers = adapter.layers(model)
    for i in blocks:
        skip_sublayer(layers[i], adapter, granularity)


def save_pruned(model: Any, plan: PrunePlan, path: str | Path, tokenizer: Any | None = None) -> Path:
    """Save weights (without the dropped ones), config with the plan, tokenizer and plan JSON."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if getattr(model.config, "blockprune_plan", None) != plan.to_dict():
        raise PlanMismatchError("the model does not carry this plan; call apply_plan(model, plan) first")
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    plan.save(path / PLAN_FILE)
    return path


def load_pruned(path: str | Path, dtype: str = "float32", device_map: Any = None) -> Any:
    """Reload a saved pruned model; sub-block plans are rebuilt without materialising dropped weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    plan_dict = getattr(config, "blockprune_plan", None)
    torch_dtype = getattr(torch, dtype)
    if not plan_dict or plan_dict.get("granularity") == "layer":
        kwargs = {"dtype": torch_dtype} | ({"device_map": device_map} if device_map is not None else {})
        return AutoModelForCausalLM.from_pretrained(path, **kwargs).eval()
    plan = PrunePlan.from_dict(plan_dict)
    adapter = adapter_for_config(config)
    from accelerate import init_empty_weights

    del config.blockprune_plan  # re-applied below
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    if hasattr(config, "kv_sharing_modes"):  # saved by an older blockprune (dummy cache slots); now dropped
        del model.config.kv_sharing_modes
    _skip_sublayers(model, adapter, plan.blocks, plan.granularity)
    model.config.blockprune_plan = plan.to_dict()
    _load_weights(model, path, torch_dtype)
    model.eval()
    if device_map is not None:
        from accelerate import dispatch_model, infer_auto_device_map

        dmap = device_map
        if isinstance(device_map, str):
            dmap = infer_auto_device_map(model, no_split_module_classes=[adapter.no_split_class])
        model = dispatch_model(model, device_map=dmap)
    return model


def _load_weights(model: Any, path: Path, dtype: torch.dtype) -> None:
    from accelerate.utils import set_module_tensor_to_device
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {path}")
    expected = {n for n, _ in model.named_parameters()}
    seen: set[str] = set()
    for f in files:
        for name, tensor in load_file(str(f)).items():
            if name not in expected:
                raise PlanMismatchError(f"{f.name} holds {name!r}, which the pruned model does not have")
            set_module_tensor_to_device(model, name, "cpu", value=tensor.to(dtype))
            seen.add(name)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
        seen |= {n for n, p in model.named_parameters() if p.device.type != "meta"}
    missing = sorted(n for n, p in model.named_parameters() if p.device.type == "meta")
    if missing:
        raise PlanMismatchError(f"weights missing from {path}: {missing[:5]}{'…' if len(missing) > 5 else ''}")


def read_plan(path: str | Path) -> PrunePlan:
    """The plan saved beside a pruned model."""
    return PrunePlan.load(Path(path) / PLAN_FILE if Path(path).is_dir() else path)


def check_plan_for_config(plan: PrunePlan, model_id: str, revision: str | None, config: Any,
                          where: str = "the plan") -> None:
    """The checks :func:`apply_plan` makes, from the model's config alone: before any weight loads."""
    if plan.model_id != model_id:
        raise PlanMismatchError(f"{where} is for model {plan.model_id!r}, not {model_id!r}")
    if plan.revision is not None and revision is not None and plan.revision != revision:
        raise PlanMismatchError(f"{where} is for revision {plan.revision!r} of {model_id!r}, the model is {revision!r}")
    n = adapter_for_config(config).n_layers(config)
    if plan.n_blocks != n:
        raise PlanMismatchError(f"{where} is for a model with {plan.n_blocks} layers, {model_id} has {n}")

