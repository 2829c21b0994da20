"""Layer-streamed ("layer-major") capture, for a model larger than the memory that would hold it.

Resident capture runs each batch of windows through every layer; this runs every window through one
layer at a time (:class:`blockprune.models.layer_stream.LayerStream`), reading each weight once and
holding about one layer plus the windows' hidden states. The hooks are the resident ones
(:class:`~blockprune.calibration.capture.CaptureHooks`), attached to the one loaded layer, and the
sample positions, store layout and manifest are built by the same functions, so the store is the
same as resident capture's: same rows, same statistics (the arithmetic per batch is identical; only
the loop order differs).

Which path to take: :func:`choose_capture_path` compares the weights in the compute dtype, times
:data:`RESIDENT_OVERHEAD`, with the memory of the device that would hold them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from blockprune.calibration.capture import (
    CaptureHooks,
    CaptureSettings,
    capture_batches,
    capture_positions,
    finish_manifest,
    first_calibrated_position,
    store_boundaries,
)
from blockprune.calibration.stats import BlockStats
from blockprune.calibration.store import ActivationStore, StoreWriter, boundary_name
from blockprune.calibration.windows import TokenWindows
from blockprune.errors import BadInputError
from blockprune.models.adapters import Adapter
from blockprune.models.checkpoint import CheckpointReader, NotStreamableError
from blockprune.models.layer_stream import LayerStream, streaming_adapter

log = logging.getLogger(__name__)

RESIDENT_OVERHEAD = 1.3  # resident peak memory ÷ weights in the compute dtype, the target of issue 19
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ------------------------------------------------------------------------------ which path


def memory_budget(device: str | torch.device = "cpu") -> int:
    """Bytes the model could use on ``device``: available host RAM, or the GPU's free memory."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def weight_bytes(model_path: str | Path, dtype: str) -> int:
    """Bytes of the weights in ``dtype``, from the safetensors headers (tied tensors stored once)."""
    if dtype not in _DTYPE_BYTES:
        raise BadInputError(f"unknown dtype {dtype!r}; one of {sorted(_DTYPE_BYTES)}")
    reader = CheckpointReader(model_path)
    n = 0
    for key in reader.info:
        numel = 1
        for s in reader.info[key][1]:
            numel *= s
        n += numel
    return n * _DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class CapturePath:
    """The decision and why: for the log line and the run's record."""

    streamed: bool
    reason: str
    weight_bytes: int | None
    budget_bytes: int | None

    @property
    def name(self) -> str:
        return "streamed" if self.streamed else "resident"


def fits_in_memory(model_path: str | Path, dtype: str = "float32", budget_bytes: int | None = None,
                   device: str | torch.device = "cpu") -> bool:
    """Whether resident use (weights × RESIDENT_OVERHEAD) fits ``budget_bytes`` (default: what ``device`` has)."""
    budget = memory_budget(device) if budget_bytes is None else int(budget_bytes)
    return weight_bytes(model_path, dtype) * RESIDENT_OVERHEAD <= budget


def choose_capture_path(model_path: str | Path, dtype: str = "float32", *, streamed: bool | None = None,
                        budget_bytes: int | None = None, device: str | torch.device = "cpu") -> CapturePath:
    """Resident or streamed, checked before any weight is read; logs one line saying which and why.

    ``streamed=True`` forces the streamed path (an architecture or folder that cannot be streamed is
    a :class:`~blockprune.models.checkpoint.NotStreamableError` here), ``False`` forces resident,
    ``None`` streams only when the model does not fit.
    """
    gib = 2**30
    if streamed is False:
        choice = CapturePath(False, "resident path requested", None, None)
    elif streamed:
        streaming_adapter(model_path)
        choice = CapturePath(True, "streamed path requested (--streamed)", weight_bytes(model_path, dtype), None)
    elif not Path(model_path).is_dir() or not list(Path(model_path).glob("*.safetensors")):
        choice = CapturePath(False, f"{model_path} is not a local safetensors folder, so it cannot be streamed",
                             None, None)
    else:
        need = weight_bytes(model_path, dtype)
        budget = memory_budget(device) if budget_bytes is None else int(budget_bytes)
        if need * RESIDENT_OVERHEAD <= budget:
            choice = CapturePath(False, f"the {dtype} weights ({need / gib:.1f} GiB × {RESIDENT_OVERHEAD}) fit the "
                                 f"{budget / gib:.1f} GiB of {device}", need, budget)
        else:
            try:
                streaming_adapter(model_path)
            except BadInputError as e:
                choice = CapturePath(False, f"the weights ({need / gib:.1f} GiB) may not fit {device} "
                                     f"({budget / gib:.1f} GiB) but cannot be streamed: {e}", need, budget)
            else:
                choice = CapturePath(True, f"the {dtype} weights ({need / gib:.1f} GiB × {RESIDENT_OVERHEAD}) do not "
                                     f"fit the {budget / gib:.1f} GiB of {device}", need, budget)
    log.info("capture path: %s (%s)", choice.name, choice.reason)
    return choice


# ------------------------------------------------------------------------------ the capture


def hidden_budgets(device: torch.device, host_budget: int | None, device_budget: int | None) -> tuple[int, int]:
    """Hidden-state budgets: a quarter of the free host memory / GPU memory unless given."""
    host = memory_budget("cpu") // 4 if host_budget is None else int(host_budget)
    dev = 0
    if device.type == "cuda":
        dev = memory_budget(device) // 4 if device_budget is None else int(device_budget)
    return host, dev


def run_capture_streamed(
    stream: LayerStream,
    windows: TokenWindows,
    positions: np.ndarray,
    settings: CaptureSettings,
    writer: Any,
    window_subset: Iterable[int] | None = None,
    *,
    host_budget: int | None = None,
    device_budget: int | None = None,
    spill_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, BlockStats]:
    """The layer-major counterpart of :func:`~blockprune.calibration.capture.run_capture`: the same hooks,
    batches and row writes, for the windows of ``window_subset`` (a contiguous range; default all).

    ``writer`` is a StoreWriter or the Ray actors' RowWriter; boundaries that are complete after a
    layer are released when the writer supports it.
    """
    ids = windows.input_ids
    subset = np.arange(len(ids)) if window_subset is None else np.asarray(sorted(window_subset))
    if np.any(np.diff(subset) != 1):
        raise ValueError("a streamed capture part must be a contiguous window range")
    first = int(subset[0])
    n_layers = stream.n_layers
    hooks = CaptureHooks(stream.adapter, settings, writer, n_layers, first_calibrated_position(windows, settings))
    batches = capture_batches(positions, subset, ids.shape[1], settings.batch_size)
    host, dev_budget = hidden_budgets(stream.device, host_budget, device_budget)
    release = getattr(writer, "release", None)
    with torch.inference_mode():
        stream.embed(ids[first : first + len(subset)], [(b.lo - first, b.hi - first) for b in batches], host,
                     dev_budget, spill_dir)
        stream.schedule([(i, None) for i in range(n_layers)])
        for i in tqdm(range(n_layers), desc="streamed capture", unit="layer", disable=not progress):
            with stream.layer(i) as layer:
                hooks.attach(layer, i)
                try:
                    for b in batches:
                        hooks.set_batch(b)
                        stream.forward_layer(layer, i, b.lo - first, b.hi - first)
                finally:
                    hooks.detach()
            if release is not None:
                done = [boundary_name("h", 0)] if i == 0 else []
                done += [boundary_name("h", i + 1)] + ([boundary_name("m", i)] if settings.capture_mid else [])
                for name in done:
                    release(name)
    return hooks.stats


def stream_report(stream: LayerStream) -> dict[str, Any]:
    """What a streamed run read and where its hidden states lived (recorded in the manifest)."""
    hs = stream.hidden
    return {
        "weight_bytes_read": stream.reader.bytes_read,
        "weight_bytes_in_checkpoint": stream.reader.total_bytes(),
        "tensors_read": len(stream.reader.reads),
        "tensors_read_more_than_once": len(stream.reader.reread()),
        "hidden_states": hs.where if hs is not None else None,
        "hidden_state_bytes": hs.nbytes if hs is not None else 0,
        "dtype": str(stream.dtype).removeprefix("torch."),
        "device": str(stream.device),
    }


def capture_streamed(
    model_path: str | Path,
    adapter: Adapter | None,
    windows: TokenWindows,
    store_path: str | Path,
    meta: dict[str, Any],
    settings: CaptureSettings,
    *,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    host_budget: int | None = None,
    device_budget: int | None = None,
    spill_dir: str | Path | None = None,
    prefetch: bool = False,
    progress: bool = True,
) -> ActivationStore:
    """Capture the same store as :func:`~blockprune.calibration.capture.capture`, one layer at a time.

    ``model_path`` is a local folder with safetensors weights; ``adapter`` (optional) must be the one
    the folder's config resolves to. ``dtype``/``device`` are the compute dtype and device.
    ``host_budget``/``device_budget`` bound the windows' hidden states (bytes) before they spill to a
    file in ``spill_dir``; ``prefetch`` reads the next layer while one runs. The manifest records the
    path taken and the bytes of weights read. Everything is checked before any weight is read.
    """
    dev = torch.device(device)
    stream = LayerStream(model_path, dtype=dtype, device=dev, head=False, prefetch=prefetch)
    if adapter is not None and adapter.family != stream.adapter.family:
        raise BadInputError(f"{model_path} is a {stream.adapter.family} model, not {adapter.family}")
    n_layers, hidden = stream.n_layers, stream.hidden_size
    positions = capture_positions(windows, settings)
    names = store_boundaries(n_layers, settings.capture_mid)
    writer = StoreWriter(store_path, names, len(positions), hidden, settings.store_dtype)
    t0 = time.perf_counter()
    try:
        with stream:
            stats = run_capture_streamed(stream, windows, positions, settings, writer, host_budget=host_budget,
                                         device_budget=device_budget, spill_dir=spill_dir, progress=progress)
            seconds = time.perf_counter() - t0
            manifest = finish_manifest(writer, meta, windows, positions, settings, stats, n_layers, hidden, seconds)
            manifest["capture_path"] = "streamed"
            manifest["streamed"] = stream_report(stream)
        store = writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
    log.info("streamed capture: %d rows × %d boundaries in %.1f s, %.2f GiB of weights read once → %s",
             len(positions), len(names), seconds, stream.reader.bytes_read / 2**30, store.path)
    return store


__all__ = [
    "RESIDENT_OVERHEAD", "CapturePath", "NotStreamableError", "capture_streamed", "choose_capture_path",
    "fits_in_memory", "memory_budget", "run_capture_streamed", "stream_report", "weight_bytes",
]
