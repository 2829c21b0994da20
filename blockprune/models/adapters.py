"""Per-architecture knowledge: where decoder layers and their sub-blocks live.

Everything else in blockprune (capture, apply, evaluation) goes through an :class:`Adapter`, so
adding an architecture is one registry entry. The check runs on the config, before any weights
are loaded, so an unsupported model fails in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blockprune.errors import BadInputError
from blockprune.registry import Registry


class UnsupportedArchitectureError(BadInputError):
    """The model's ``model_type`` has no adapter."""


@dataclass(frozen=True)
class Adapter:
    """Names of the modules that make up one decoder layer of an architecture family.

    ``attention_modules``/``mlp_modules`` are the attributes of a layer that belong to each
    sub-block (the sub-block itself and its norms); they are what attention-only / MLP-only
    pruning removes. ``mid_stream_module`` is the module whose *input* is the residual stream
    after the attention sub-block (x + Attn(LN x)): the boundary between the two sub-blocks.
    """

    family: str
    model_types: tuple[str, ...]
    layers_path: str
    attention: str
    mlp: str
    attention_modules: tuple[str, ...]
    mlp_modules: tuple[str, ...]
    mid_stream_module: str
    no_split_class: str
    n_layers_attr: str = "num_hidden_layers"
    per_layer_config_lists: tuple[str, ...] = ("layer_types",)
    # where the parts outside the decoder layers live, for layer-streamed runs
    # (blockprune.models.layer_stream): the token embedding, the final norm and the LM head
    embedding_path: str = "model.embed_tokens"
    final_norm_path: str = "model.norm"
    lm_head_path: str = "lm_head"

    def layers(self, model: Any) -> Any:
        """The ``nn.ModuleList`` of decoder layers."""
        return submodule(model, self.layers_path)

    def set_layers(self, model: Any, layers: Any) -> None:
        *parents, last = self.layers_path.split(".")
        obj = model
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, last, layers)

    def n_layers(self, config: Any) -> int:
        return int(getattr(text_config(config), self.n_layers_attr))


def submodule(model: Any, path: str) -> Any:
    """The module at a dotted attribute path (``"model.norm"``)."""
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def text_config(config: Any) -> Any:
    """The decoder's config (multimodal wrappers keep it in ``text_config``)."""
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


_LLAMA_LIKE = dict(
    layers_path="model.layers",
    attention="self_attn",
    mlp="mlp",
    attention_modules=("self_attn", "input_layernorm"),
    mlp_modules=("mlp", "post_attention_layernorm"),
    mid_stream_module="post_attention_layernorm",
)

ADAPTERS: Registry[Adapter] = Registry("architecture")
for _family, _types, _cls in (
    ("llama", ("llama",), "LlamaDecoderLayer"),
    ("mistral", ("mistral",), "MistralDecoderLayer"),
    ("qwen2", ("qwen2",), "Qwen2DecoderLayer"),
    ("qwen3", ("qwen3",), "Qwen3DecoderLayer"),
):
    ADAPTERS.register(_family, Adapter(family=_family, model_types=_types, no_split_class=_cls, **_LLAMA_LIKE))

ADAPTERS.register(
    "gemma3",
    Adapter(
        family="gemma3",
        model_types=("gemma3_text",),
        layers_path="model.layers",
        attention="self_attn",
        mlp="mlp",
        # Gemma3 normalises the attention output before the residual add (sandwich norms)
        attention_modules=("self_attn", "input_layernorm", "post_attention_layernorm"),
        mlp_modules=("mlp", "pre_feedforward_layernorm", "post_feedforward_layernorm"),
        mid_stream_module="pre_feedforward_layernorm",
        no_split_class="Gemma3DecoderLayer",
    ),
)
ADAPTERS.register(
    "gpt2",
    Adapter(
        family="gpt2",
        model_types=("gpt2",),
        layers_path="transformer.h",
        attention="attn",
        mlp="mlp",
        attention_modules=("attn", "ln_1"),
        mlp_modules=("mlp", "ln_2"),
        mid_stream_module="ln_2",
        no_split_class="GPT2Block",
        n_layers_attr="n_layer",
        per_layer_config_lists=(),
        embedding_path="transformer.wte",
        final_norm_path="transformer.ln_f",
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for name in ADAPTERS.names() for t in ADAPTERS.get(name).model_types)


def adapter_for_config(config: Any) -> Adapter:
    """The adapter for a config; raises :class:`UnsupportedArchitectureError` naming the supported ones."""
    model_type = getattr(text_config(config), "model_type", None)
    for name in ADAPTERS.names():
        adapter = ADAPTERS.get(name)
        if model_type in adapter.model_types:
            return adapter
    raise UnsupportedArchitectureError(
        f"unsupported architecture {model_type!r}; supported model types: {', '.join(supported_model_types())}"
    )


def adapter_for(model: Any) -> Adapter:
    return adapter_for_config(model.config)
