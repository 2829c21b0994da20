"""Disk space and writability a job needs, checked before any weight loads.

Why up front: a store is written through memory maps, and a pruned model is saved after the whole run;
a full disk found then costs the capture or the run. The sizes are computed from the model's config and
weight-file headers (no tensor is read), so the check takes milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from blockprune.calibration.store import existing_parent
from blockprune.errors import BadInputError, DiskSpaceError, ResourceError

# room kept free beyond the estimate: the manifest, positions, token ids, the score cache, and other writers
MARGIN_BYTES = 64 * 2**20
MARGIN_FRACTION = 0.02
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_LAYER_KEY = re.compile(r"\.layers\.(\d+)\.")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def free_bytes(path: str | Path) -> int:
    return shutil.disk_usage(existing_parent(Path(path))).free


def require_space(path: str | Path, needed: int, what: str, hint: str) -> None:
    """Raise :class:`DiskSpaceError` unless ``path``'s filesystem has ``needed`` bytes plus a margin free."""
    want = int(needed * (1 + MARGIN_FRACTION)) + MARGIN_BYTES
    free = free_bytes(path)
    if free < want:
        raise DiskSpaceError(f"not enough disk space for {what} at {path}: needs about {_mb(want)} "
                             f"(with a {_mb(MARGIN_BYTES)} margin), {_mb(free)} free; {hint}")


def store_bytes(n_layers: int, hidden: int, n_rows: int, capture_mid: bool, store_dtype: str) -> int:
    """Bytes of a store's boundary arrays: (L + 1 [+ L mid]) × rows × hidden × itemsize."""
    boundaries = n_layers + 1 + (n_layers if capture_mid else 0)
    return boundaries * n_rows * hidden * DTYPE_BYTES[store_dtype]


def check_writable_dir(path: str | Path, what: str) -> None:
    """``path`` (created if missing) must be a folder this process can create files in.

    A real probe, not ``os.access``: root passes ``access`` checks on read-only mounts."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInputError(f"{what} {path} is an existing file, not a folder")
    parent = existing_parent(path)
    if not parent.is_dir():
        raise BadInputError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".blockprune-probe-"):
            pass
    except OSError as e:
        raise ResourceError(f"{what} {path} is not writable ({e.strerror})") from None


def check_writable_file(path: str | Path, what: str) -> None:
    """A file to be written: not a folder, in a folder that exists (or can be made) and is writable."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{what} {path} is a folder; give a file name")
    check_writable_dir(path.parent, f"the folder of {what}")


def _safetensors_shapes(folder: Path) -> Iterable[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of every tensor in a folder's ``*.safetensors`` files, from their headers only."""
    for f in sorted(folder.glob("*.safetensors")):
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, info in header.items():
            if name != "__metadata__":
                yield name, info["dtype"], info["shape"]


def weight_counts(folder: str | Path) -> tuple[int, dict[int, int]] | None:
    """(total parameters, parameters per decoder layer index) from safetensors headers; None without them."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        return None
    total = 0
    per_layer: dict[int, int] = {}
    for name, _, shape in _safetensors_shapes(folder):
        n = 1
        for s in shape:
            n *= int(s)
        total += n
        m = _LAYER_KEY.search(name)
        if m:
            per_layer[int(m.group(1))] = per_layer.get(int(m.group(1)), 0) + n
    return total, per_layer


def pruned_model_bytes(folder: str | Path, dtype: str, granularity: str, n_prune: int) -> int | None:
    """Estimated bytes of a saved pruned model: the weights minus the removed layers (a sub-block plan is
    counted as the dense model, an upper bound), in the job's dtype; None when the folder has no headers."""
    counts = weight_counts(folder)
    if counts is None:
        return None
    total, per_layer = counts
    removed = 0
    if granularity == "layer" and per_layer:
        removed = int(n_prune * sum(per_layer.values()) / len(per_layer))
    tokenizer = sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file() and "token" in f.name)
    return (total - removed) * DTYPE_BYTES.get(dtype, 4) + tokenizer


def check_job_space(store: Path, store_needed: int | None, save_dir: str | None, model_folder: str,
                    dtype: str, trials: Iterable[Any]) -> None:
    """The store's filesystem must hold the store (when it is to be captured), ``save_dir``'s every pruned model."""
    if store_needed:
        require_space(store.parent, store_needed, "the activation store",
                      "free space or pass --store-root on a larger disk")
    if save_dir:
        check_writable_dir(save_dir, "--save-dir")
        sizes = [pruned_model_bytes(model_folder, dtype, t.granularity, t.n_prune) for t in trials]
        if all(s is not None for s in sizes):
            same_fs = os.stat(existing_parent(Path(save_dir))).st_dev == os.stat(existing_parent(store.parent)).st_dev
            with_store = bool(same_fs and store_needed)
            need = sum(sizes) + (store_needed if with_store else 0)
            require_space(save_dir, need, f"{len(sizes)} pruned model(s)" + (" and the store" if with_store else ""),
                          "free space or choose another --save-dir")
