"""GGUF → ordinary Hugging Face folder, one tensor at a time.

transformers' own GGUF loading dequantises every tensor to fp32 into one state dict and then
copies it into the model: the process holds the weights about twice (16 GB for a 1.5B model in
fp32). Here each tensor is read from the file with plain reads (no mapping of the whole file),
dequantised in row blocks, converted to the stored dtype and appended to a safetensors shard that
is written as soon as it is full. Peak memory is one fp32 tensor plus one shard, whatever the model
size.

Name mapping, tensor fix-ups (e.g. Llama's q/k permutation) and the config come from transformers'
GGUF utilities, so the result equals ``from_pretrained(..., gguf_file=...)`` tensor for tensor (the
tests check it bit for bit).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_ROW_BLOCK_BYTES = 64 << 20  # quantised bytes dequantised at once (bounds dequantisation temporaries)


def _read_tensor(f: Any, tensor: Any) -> np.ndarray:
    """A GGUF tensor dequantised to fp32, read in row blocks without mapping the file."""
    from gguf import dequantize

    raw_shape = tuple(int(s) for s in tensor.data.shape)
    raw_dtype = tensor.data.dtype
    if len(raw_shape) < 2:
        buf = np.empty(raw_shape, dtype=raw_dtype)
        f.seek(tensor.data_offset)
        f.readinto(memoryview(buf).cast("B"))
        return np.asarray(dequantize(buf, tensor.tensor_type), dtype=np.float32)
    rows = raw_shape[0]
    row_bytes = int(tensor.n_bytes) // rows
    step = max(1, _ROW_BLOCK_BYTES // row_bytes)
    out: np.ndarray | None = None
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        buf = np.empty((r1 - r0, *raw_shape[1:]), dtype=raw_dtype)
        f.seek(tensor.data_offset + r0 * row_bytes)
        f.readinto(memoryview(buf).cast("B"))
        part = dequantize(buf, tensor.tensor_type)
        if out is None:
            out = np.empty((rows, *part.shape[1:]), dtype=np.float32)
        out[r0:r1] = part
    assert out is not None
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _ShardWriter:
    """Appends tensors to safetensors shards of at most ``max_bytes``; writes the HF index at the end."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.max_bytes:
            self.flush()
        self.pending[name] = tensor.contiguous()
        self.pending_bytes += size
        self.total += size

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        path = self.folder / f"shard-{len(self.shards):05d}.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        path.chmod(0o666 & ~_umask())  # safetensors creates files private to the owner; the cache is shared
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        self.flush()
        n = len(self.shards)
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.folder / f"shard-{i:05d}.tmp", self.folder / final)
            weight_map |= dict.fromkeys(names, final)
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _config_from_parsed(parsed: dict[str, Any]) -> Any:
    """The config transformers builds from a GGUF's metadata (as ``AutoConfig.from_pretrained(gguf_file=…)``)."""
    from transformers import CONFIG_MAPPING

    values = dict(parsed["config"])
    config = CONFIG_MAPPING[values["model_type"]].from_dict(values)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _gguf_to_hf_names(skeleton: Any, processor: Any, architecture: str, n_layers: int,
                      expected: set[str]) -> dict[str, str]:
    """GGUF tensor name → HF parameter name, from gguf-py's standard tensor names.

    One name table for the whole model; transformers' recursive variant (built per submodule, ~40 ms
    each, ~15 s per model) is the fallback for architectures whose names this does not cover.
    """
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == architecture), None)
    names: dict[str, str] = {}
    if arch is not None:
        table = get_tensor_name_map(arch, n_layers)
        for key in expected:
            base, _, suffix = processor.preprocess_name(key).rpartition(".")
            gguf_base = table.get_name(base) if suffix in ("weight", "bias") else None
            if gguf_base is not None:
                names[f"{gguf_base}.{suffix}"] = key
    if not expected <= set(names.values()):
        names = get_gguf_hf_weights_map(skeleton, processor)
    return names


def convert_gguf(gguf: Path, out: Path, dtype: torch.dtype, *, shard_bytes: int = 512 << 20,
                 tokenizer_overrides: Mapping[str, Any] | None = None,
                 progress: Callable[[str], None] | None = None) -> Any:
    """Write ``out`` (a new folder): config, weights in ``dtype`` as safetensors shards, tokenizer.

    ``tokenizer_overrides`` sets tokenizer attributes where the GGUF metadata differs from the
    official tokenizer (e.g. Qwen: the GGUF names a BOS token, the official tokenizer has none).
    Returns the config. Raises RuntimeError (a bug, not bad input) when the GGUF's tensors do not
    cover the model exactly.
    """
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        load_gguf_checkpoint,
    )

    parsed = load_gguf_checkpoint(str(gguf), return_tensors=False)
    config = _config_from_parsed(parsed)
    config.dtype = dtype
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        for key in getattr(skeleton, "_tied_weights_keys", None) or {}:
            expected.pop(key, None)
    reader = GGUFReader(str(gguf))
    architecture = str(reader.fields["general.architecture"].contents())
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    name_map = _gguf_to_hf_names(skeleton, processor, architecture, config.get_text_config().num_hidden_layers,
                                 set(expected))
    del skeleton

    out.mkdir(parents=True)
    writer = _ShardWriter(out, shard_bytes)
    written: set[str] = set()
    with open(gguf, "rb", buffering=0) as f:
        for i, tensor in enumerate(reader.tensors):
            weights = _read_tensor(f, tensor)
            result = processor.process(weights=weights, name=tensor.name, tensor_key_mapping=name_map,
                                       parsed_parameters=parsed)
            hf_name = name_map.get(result.name)
            if hf_name is None or hf_name not in expected:
                continue  # e.g. precomputed rope frequencies: the model rebuilds them
            value = torch.from_numpy(np.ascontiguousarray(result.weights)).to(dtype)
            if tuple(value.shape) != expected[hf_name]:
                raise RuntimeError(f"{gguf.name}: {tensor.name} → {hf_name} has shape {tuple(value.shape)}, "
                                   f"the model expects {expected[hf_name]}")
            writer.add(hf_name, value)
            written.add(hf_name)
            del weights, result, value
            if progress is not None:
                progress(f"{i + 1}/{len(reader.tensors)} {tensor.name}")
    missing = sorted(set(expected) - written)
    if missing:
        raise RuntimeError(f"{gguf.name} lacks tensors for {missing[:5]}{'…' if len(missing) > 5 else ''}")
    writer.close()
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    for key, value in (tokenizer_overrides or {}).items():
        setattr(tokenizer, key, value)
    tokenizer.save_pretrained(out)
    return config
