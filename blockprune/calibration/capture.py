"""Activation capture with forward hooks on the decoder layers.

Why hooks and not ``output_hidden_states``: the last hidden state transformers returns is after
the final norm, which would distort the last block's scores. Hooks see each layer's true input
and output. Inside the hook the sampled rows are gathered on the device and only they leave it,
and every-token statistics are reduced to a few scalars there, so host memory is bounded by the
sample size, never by the corpus size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from blockprune.calibration.settings import CaptureSettings, for_window_pooling, key_settings  # noqa: F401 (re-exported)
from blockprune.calibration.stats import BlockStats, token_dot, token_norm
from blockprune.calibration.store import ActivationStore, StoreWriter, boundary_name
from blockprune.calibration.windows import TokenWindows
from blockprune.errors import BlockpruneError
from blockprune.models.adapters import Adapter

log = logging.getLogger(__name__)


class NonFiniteActivationError(BlockpruneError, FloatingPointError):
    """NaN or inf appeared in a layer's activations."""


def sample_positions(n_windows: int, seq_len: int, n_rows: int, seed: int, skip_first: bool,
                     whole_windows: bool = False) -> np.ndarray:
    """(n, 2) sorted (window, position) pairs, seeded; position 0 excluded when it is BOS.

    ``whole_windows``: every position of ``n_rows // row length`` seeded windows instead of ``n_rows``
    positions drawn across all windows (see ``CaptureSettings.sampling``)."""
    first = 1 if skip_first else 0
    per = seq_len - first
    total = n_windows * per
    if whole_windows:
        keep = min(n_windows, n_rows // per)
        if keep < 1:
            raise ValueError(f"sample_rows={n_rows} holds no whole window of {per} rows; raise sample_rows to at "
                             f"least {per}")
        rng = np.random.default_rng([seed, 0xB10C, 1])
        wins = np.arange(n_windows) if keep == n_windows else np.sort(rng.choice(n_windows, keep, replace=False))
        flat = (wins[:, None] * per + np.arange(per)[None, :]).ravel()
    else:
        rng = np.random.default_rng([seed, 0xB10C])
        flat = np.arange(total) if n_rows >= total else np.sort(rng.choice(total, size=n_rows, replace=False))
    return np.stack([flat // per, flat % per + first], axis=1).astype(np.int64)


def store_boundaries(n_layers: int, capture_mid: bool) -> list[str]:
    """The arrays a store holds: h_0 … h_L, then m_0 … m_{L-1} when mid-points are captured (every capture path)."""
    names = [boundary_name("h", i) for i in range(n_layers + 1)]
    if capture_mid:
        names += [boundary_name("m", i) for i in range(n_layers)]
    return names


def capture_positions(windows: TokenWindows, settings: CaptureSettings) -> np.ndarray:
    """The store's rows for these windows and settings: the one call every capture path makes."""
    skip = windows.has_bos and not settings.include_bos
    return sample_positions(len(windows.input_ids), windows.input_ids.shape[1], settings.sample_rows,
                            settings.seed, skip, whole_windows=settings.sampling == "windows")


@dataclass(frozen=True)
class CaptureBatch:
    """One batch of windows: a contiguous window range and the sample rows that fall in it.

    ``row_start`` is the first store row of the batch (rows are sorted by window), and
    ``flat_index`` the sampled tokens as (window − first window) × seq_len + position.
    """

    index: int
    windows: np.ndarray
    row_start: int
    flat_index: np.ndarray

    @property
    def lo(self) -> int:
        return int(self.windows[0])

    @property
    def hi(self) -> int:
        return int(self.windows[-1]) + 1


def capture_batches(positions: np.ndarray, window_ids: np.ndarray, seq_len: int, batch_size: int) -> list[CaptureBatch]:
    """Batches of ``batch_size`` windows in order, each with its slice of the sorted sample positions."""
    out = []
    for k, i in enumerate(range(0, len(window_ids), batch_size)):
        batch = window_ids[i : i + batch_size]
        if np.any(np.diff(batch) != 1):
            raise ValueError("window batches must be contiguous")
        lo = int(np.searchsorted(positions[:, 0], batch[0], side="left"))
        hi = int(np.searchsorted(positions[:, 0], batch[-1], side="right"))
        sel = positions[lo:hi]
        out.append(CaptureBatch(k, batch, lo, (sel[:, 0] - batch[0]) * seq_len + sel[:, 1]))
    return out


class CaptureHooks:
    """Forward hooks that feed the statistics and the store, one layer and one batch at a time.

    Shared by resident capture (hooks on every layer, batches in the outer loop) and layer-streamed
    capture (:mod:`blockprune.calibration.streamed`: one layer attached at a time, batches in the inner
    loop). Either way a layer's input norms are its predecessor's output norms of the same batch, kept
    per batch until the next layer has used them, so both orders compute the same numbers.
    """

    def __init__(self, adapter: Adapter, settings: CaptureSettings, writer: StoreWriter | None,
                 n_layers: int, first_pos: int) -> None:
        self.adapter = adapter
        self.settings = settings
        self.writer = writer
        self.n_layers = n_layers
        self.first_pos = first_pos
        self.stats = {g: BlockStats(n_layers) for g in ("layer", "attention", "mlp")}
        self.handles: list[Any] = []
        self.mid: torch.Tensor | None = None
        self.prev_norm: dict[int, torch.Tensor] = {}  # batch index → norms of the current layer's input
        self.batch: CaptureBatch | None = None
        self._index_cache: dict[torch.device, torch.Tensor] = {}

    def attach(self, layer: Any, i: int) -> None:
        """Hook decoder layer ``i`` (its output, and its mid stream when captured)."""
        self.handles.append(layer.register_forward_hook(self._layer_hook(i), with_kwargs=True))
        if self.settings.capture_mid:
            mid_mod = getattr(layer, self.adapter.mid_stream_module)
            self.handles.append(mid_mod.register_forward_pre_hook(self._mid_hook(i)))

    def set_batch(self, batch: CaptureBatch) -> None:
        self.batch = batch
        self._index_cache = {}

    def _index(self, device: torch.device) -> torch.Tensor:
        if device not in self._index_cache:
            self._index_cache[device] = torch.from_numpy(self.batch.flat_index).to(device)
        return self._index_cache[device]

    def _save(self, name: str, t: torch.Tensor) -> None:
        if self.writer is None:
            return
        flat = t.reshape(-1, t.shape[-1])
        rows = flat.index_select(0, self._index(flat.device)).to("cpu", torch.float32).numpy()
        self.writer.write_rows(name, self.batch.row_start, rows)

    def _norms(self, where: str, t: torch.Tensor) -> torch.Tensor:
        """Per-token norms of the calibration tokens; a NaN/inf anywhere in a row makes its norm non-finite."""
        n = token_norm(t[:, self.first_pos :])
        if not bool(torch.isfinite(n).all()):
            raise NonFiniteActivationError(f"NaN/inf activations at {where}")
        if self.first_pos and not bool(torch.isfinite(token_norm(t[:, : self.first_pos])).all()):
            raise NonFiniteActivationError(f"NaN/inf activations at {where} (BOS position)")
        return n

    def _mid_hook(self, i: int) -> Any:
        def hook(module: Any, args: tuple) -> None:
            self.mid = args[0]

        return hook

    def _layer_hook(self, i: int) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            y = output[0] if isinstance(output, tuple) else output
            f = self.first_pos
            b = self.batch.index
            if i == 0:
                self.prev_norm[b] = self._norms("the input of layer 0 (embeddings)", x)
                self._save(boundary_name("h", 0), x)
            nx = self.prev_norm.pop(b)
            ny = self._norms(f"the output of layer {i}", y)
            xs, ys = x[:, f:], y[:, f:]
            self.stats["layer"].add_from_norms(i, token_dot(xs, ys), nx, ny)
            self._save(boundary_name("h", i + 1), y)
            if self.settings.capture_mid:
                m, self.mid = self.mid, None
                if m is None:
                    raise RuntimeError(f"mid-layer hook of layer {i} did not fire; adapter mismatch?")
                nm = self._norms(f"layer {i} after its attention sub-block", m)
                ms = m[:, f:]
                self.stats["attention"].add_from_norms(i, token_dot(xs, ms), nx, nm)
                self.stats["mlp"].add_from_norms(i, token_dot(ms, ys), nm, ny)
                self._save(boundary_name("m", i), m)
            if i + 1 < self.n_layers:
                self.prev_norm[b] = ny  # the next layer's input is this layer's output

        return hook

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def input_device(model: Any) -> torch.device:
    return model.get_input_embeddings().weight.device


def first_calibrated_position(windows: TokenWindows, settings: CaptureSettings) -> int:
    """1 when column 0 is a BOS, else 0: the streamed statistics never count BOS (``include_bos`` only keeps
    its row in the store, for per-window estimators)."""
    return 1 if windows.has_bos else 0


def run_capture(
    model: Any,
    adapter: Adapter,
    windows: TokenWindows,
    positions: np.ndarray,
    settings: CaptureSettings,
    writer: StoreWriter | None,
    window_subset: Iterable[int] | None = None,
    progress: bool = True,
) -> dict[str, BlockStats]:
    """Forward the windows through the model's decoder with hooks; returns the statistics.

    ``window_subset`` restricts the pass to some windows (data-parallel replicas); rows of the
    sample belonging to other windows are left untouched in the writer.
    """
    layers = adapter.layers(model)
    hooks = CaptureHooks(adapter, settings, writer, len(layers), first_calibrated_position(windows, settings))
    for i, layer in enumerate(layers):
        hooks.attach(layer, i)
    ids = windows.input_ids
    subset = np.arange(len(ids)) if window_subset is None else np.asarray(sorted(window_subset))
    batches = capture_batches(positions, subset, ids.shape[1], settings.batch_size)
    device = input_device(model)
    base = model.base_model  # skip the LM head: its logits are not needed for capture
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc="capture", unit="batch", disable=not progress):
                hooks.set_batch(batch)
                base(input_ids=torch.from_numpy(ids[batch.lo : batch.hi]).to(device), use_cache=False)
    finally:
        hooks.detach()
    return hooks.stats


def windows_digest(windows: TokenWindows) -> str:
    return hashlib.sha256(np.ascontiguousarray(windows.input_ids).tobytes()).hexdigest()[:16]


def store_key(meta: dict[str, Any], settings: CaptureSettings) -> str:
    """Stores are reused when the model, data and capture settings are the same. A setting added later
    enters the key only when it differs from its default, so stores captured before it existed (which
    behave as the default) keep their keys (:func:`~blockprune.calibration.settings.key_settings`)."""
    payload = json.dumps({"meta": meta, "settings": key_settings(settings)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def finish_manifest(writer: StoreWriter, meta: dict[str, Any], windows: TokenWindows, positions: np.ndarray,
                    settings: CaptureSettings, stats: dict[str, BlockStats], n_layers: int, hidden: int,
                    seconds: float) -> dict[str, Any]:
    """Write the position/token arrays and build the manifest; shared by every capture path."""
    skip = windows.has_bos
    writer.save_array("positions", positions)
    writer.save_array("token_ids", windows.input_ids[positions[:, 0], positions[:, 1]])
    return {
        **meta,
        "n_layers": n_layers,
        "hidden_size": hidden,
        "n_rows": len(positions),
        "capture_mid": settings.capture_mid,
        "bos_row_kept": bool(windows.has_bos and settings.include_bos),  # position 0 rows are BOS
        "settings": asdict(settings),
        "windows_digest": windows_digest(windows),
        "tokens_calibrated": int(windows.input_ids.shape[0] * (windows.input_ids.shape[1] - (1 if skip else 0))),
        "capture_seconds": seconds,
        "stats": {g: s.to_dict() for g, s in stats.items() if g == "layer" or settings.capture_mid},
    }


def capture(
    model: Any,
    adapter: Adapter,
    windows: TokenWindows,
    store_path: str | Path,
    meta: dict[str, Any],
    settings: CaptureSettings,
    progress: bool = True,
) -> ActivationStore:
    """Capture a complete store at ``store_path`` (written atomically)."""
    n_layers = len(adapter.layers(model))
    hidden = int(model.get_input_embeddings().weight.shape[1])
    positions = capture_positions(windows, settings)
    names = store_boundaries(n_layers, settings.capture_mid)
    writer = StoreWriter(store_path, names, len(positions), hidden, settings.store_dtype)
    t0 = time.perf_counter()
    try:
        stats = run_capture(model, adapter, windows, positions, settings, writer, progress=progress)
        seconds = time.perf_counter() - t0
        manifest = finish_manifest(writer, meta, windows, positions, settings, stats, n_layers, hidden, seconds)
        store = writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
    log.info("captured %d rows × %d boundaries in %.1f s → %s", len(positions), len(names), seconds, store.path)
    return store
