"""Loading a safetensors folder into another dtype without holding the weights twice.

When the requested dtype equals the stored one, transformers maps the files and the weights are
the (shared, reclaimable) page cache: nothing to improve. When it differs (the bundled Qwen models
are stored in bf16 and usually computed in fp32), transformers maps every shard, touches all of it
while converting, and keeps it mapped until the end: peak RSS ≈ fp32 weights + bf16 file ≈ 1.5 × the
fp32 weights. Here the model is built without weights, and each tensor is read with plain reads in
row blocks, converted, and placed: peak ≈ the weights in the compute dtype plus one row block.
The result equals ``from_pretrained(folder, dtype=…)`` bit for bit (tested).
"""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_BLOCK_BYTES = 32 << 20  # stored bytes converted at once


def safetensors_index(folder: Path) -> dict[str, tuple[Path, torch.dtype, tuple[int, ...], int, int]]:
    """name → (file, stored dtype, shape, absolute byte offset, byte length), from the files' headers only."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            out[name] = (f, _SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), 8 + n + begin, end - begin)
    return out


def stored_dtypes(folder: Path) -> set[torch.dtype]:
    return {dtype for _, dtype, _, _, _ in safetensors_index(folder).values()}


def _read_converted(fh: Any, stored: torch.dtype, shape: tuple[int, ...], offset: int, length: int,
                    dtype: torch.dtype) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype)
    if length == 0:
        return out
    flat = out.view(-1)
    itemsize = torch.empty((), dtype=stored).element_size()
    step = max(1, _BLOCK_BYTES // itemsize)
    total = math.prod(shape)
    for start in range(0, total, step):
        count = min(step, total - start)
        buf = bytearray(count * itemsize)
        fh.seek(offset + start * itemsize)
        fh.readinto(buf)
        flat[start : start + count] = torch.frombuffer(buf, dtype=stored)
    return out


def load_converting(folder: str | Path, dtype: torch.dtype) -> Any:
    """``AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)`` for a local safetensors folder, streamed."""
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    index = safetensors_index(folder)
    expected = dict(model.state_dict(keep_vars=True))
    unexpected = sorted(set(index) - set(expected))
    if unexpected:
        raise ValueError(f"{folder} holds tensors the model does not have: {unexpected[:5]}")
    handles: dict[Path, Any] = {}
    try:
        for name, (file, stored, shape, offset, length) in index.items():
            if tuple(expected[name].shape) != shape:
                raise ValueError(f"{folder}: {name} has shape {shape}, the model expects {tuple(expected[name].shape)}")
            fh = handles.get(file) or handles.setdefault(file, open(file, "rb", buffering=0))  # noqa: SIM115
            target = expected[name].dtype if not expected[name].is_floating_point() else dtype
            set_module_tensor_to_device(model, name, "cpu", value=_read_converted(fh, stored, shape, offset, length,
                                                                                  target))
    finally:
        for fh in handles.values():
            fh.close()
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        model.tie_weights()
    missing = sorted(n for n, t in model.state_dict(keep_vars=True).items() if t.device.type == "meta")
    if missing:
        raise ValueError(f"weights missing from {folder}: {missing[:5]}{'…' if len(missing) > 5 else ''}")
    if (folder / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.config._name_or_path = str(folder)
    return model.eval()
