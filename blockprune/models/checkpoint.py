"""Read a Hugging Face safetensors checkpoint one module at a time, each tensor at most once.

Why: layer-streamed capture and perplexity (:mod:`blockprune.models.layer_stream`) hold one decoder
layer at a time, so the weights must come off disk per module, not per model. Only the shard
headers are read up front (names, shapes, dtypes: enough to plan, size and check a run before any
weight is read). A request opens the shards it needs with safetensors' ``safe_open`` and closes
them before returning: safetensors memory-maps a shard, and its mapped pages count as this
process's resident memory until the handle closes, so a long-lived handle would grow to the shard.
Every tensor read is counted, so "each weight byte read once" can be checked, not assumed.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from blockprune.errors import BadInputError

INDEX_FILE = "model.safetensors.index.json"
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


class NotStreamableError(BadInputError):
    """The model folder or architecture cannot be read layer by layer."""


def _header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names → dtype, shape, offsets), without touching the data."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size <= 0 or size > 100 * 2**20:
            raise NotStreamableError(f"{path} is not a safetensors file (header length {size})")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return header


class CheckpointReader:
    """Tensor names, sizes and per-tensor reads of the ``*.safetensors`` shards in a model folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NotStreamableError(f"layer-streamed runs need a local model folder; {folder} is not one")
        index = self.folder / INDEX_FILE
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in self.folder.glob("*.safetensors"))
        if not files:
            kinds = sorted({p.suffix for p in self.folder.iterdir() if p.suffix in (".bin", ".pt", ".gguf", ".pth")})
            raise NotStreamableError(
                f"{self.folder} has no .safetensors weights{' (only ' + ', '.join(kinds) + ')' if kinds else ''}; "
                "layer-streamed runs read safetensors shards (re-save the model with save_pretrained)"
            )
        self.file_of: dict[str, str] = {}
        self.info: dict[str, tuple[str, tuple[int, ...]]] = {}
        for name in files:
            path = self.folder / name
            if not path.exists():
                raise NotStreamableError(f"{path} is listed in {INDEX_FILE} but missing")
            for key, meta in _header(path).items():
                self.file_of[key] = name
                self.info[key] = (meta["dtype"], tuple(meta["shape"]))
        self.reads: Counter[str] = Counter()
        self.bytes_read = 0

    def __contains__(self, key: str) -> bool:
        return key in self.file_of

    def nbytes(self, key: str) -> int:
        dtype, shape = self.info[key]
        n = 1
        for s in shape:
            n *= s
        return n * _DTYPE_BYTES.get(dtype, 4)

    def total_bytes(self, keys: Any = None) -> int:
        return sum(self.nbytes(k) for k in (self.file_of if keys is None else keys))

    def read(self, targets: dict[str, tuple[torch.dtype, Any]]) -> dict[str, torch.Tensor]:
        """Read each checkpoint tensor ``key`` as ``(dtype, device)``; owned copies, shards closed on return."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for key in targets:
            if key not in self.file_of:
                raise NotStreamableError(f"{self.folder} has no tensor {key!r}")
            by_file.setdefault(self.file_of[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for fname, keys in by_file.items():
            with safe_open(str(self.folder / fname), framework="pt", device="cpu") as f:
                for key in keys:
                    raw = f.get_tensor(key)  # a view of the memory map: the bytes are read by the copy below
                    dtype, device = targets[key]
                    out[key] = raw.to(device=device, dtype=dtype, copy=True)
                    self.reads[key] += 1
                    self.bytes_read += raw.numel() * raw.element_size()
                    del raw
        return out

    def reread(self) -> dict[str, int]:
        """Tensors read more than once (empty when every weight byte was read at most once)."""
        return {k: c for k, c in self.reads.items() if c > 1}
