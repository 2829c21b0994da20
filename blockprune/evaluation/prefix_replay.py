"""Start a pruned model's forward pass at its first changed layer, from the dense model's recorded hidden states.

A plan whose lowest block is ``m`` (a removed layer, or a layer whose attention or MLP is skipped) leaves
layers ``0 … m-1`` exactly as they are: on the same input their output is the dense model's, bit for bit.
A study evaluates dozens of plans on the same fixed inputs (perplexity windows, lm-eval requests, batched
the same way every time), so it recomputes those prefixes over and over; at 1.5B on a CPU that is about
half of every plan's lm-eval (most plans drop late layers).

:func:`recording` hooks the dense model and saves its hidden states after chosen layers, one file per
(batch, layer), keyed by a hash of the batch's input ids. :func:`replaying` hooks a model that carries a
plan: for a batch whose key was recorded after layer ``c < m`` (the latest such ``c``), layers ``0 … c``
skip their compute and layer ``c`` hands on the recorded tensor; any batch not recorded runs in full. So a
missing, partial or foreign store can cost time but never change a result. What the hidden states depend
on besides the input (weights, dtypes, library versions, thread count) goes into the store's directory
name (:func:`replay_dir`), so a store is only read by the computation that wrote it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from blockprune.models.adapters import adapter_for

log = logging.getLogger(__name__)
_ABSENT = object()
MIN_FREE_BYTES = 2 << 30  # recording stops (results unaffected) when the disk has less than this left


def replay_dir(base: str | os.PathLike[str], model_name: str, identity: Mapping[str, Any]) -> Path:
    """The store for one model and one way of computing it: ``identity`` (revision, dtypes, versions, threads)
    is hashed into the name, so a changed computation never reads another's hidden states."""
    ident = {"model": model_name, "torch": torch.__version__, "threads": torch.get_num_threads(), **identity}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(base) / f"{model_name}-{digest}"


def batch_key(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> str:
    """A name for one batch: its shape and token ids (and mask, when one is passed)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(input_ids.shape), str(input_ids.dtype))).encode())
    h.update(input_ids.detach().cpu().contiguous().numpy().tobytes())
    if attention_mask is not None:
        h.update(attention_mask.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class ReplayStats:
    """What a recording or replaying block did: batches seen, found (hits) or not, layers skipped per hit."""

    hits: int = 0
    misses: int = 0
    saved: int = 0
    skipped_layers: int = 0
    stopped: str | None = None


class _Store:
    """Files ``layer-XX/<key>.pt`` under ``root``, written atomically (a crash leaves no half file)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str, layer: int) -> Path:
        return self.root / f"layer-{layer:03d}" / f"{key}.pt"

    def layers(self) -> list[int]:
        if not self.root.is_dir():
            return []
        return sorted(int(p.name[6:]) for p in self.root.glob("layer-*") if p.name[6:].isdigit())

    def save(self, key: str, layer: int, tensor: torch.Tensor) -> None:
        path = self.path(key, layer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save(tensor.detach().to("cpu").clone(), tmp)
        os.replace(tmp, path)


def _ids_and_mask(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    ids = kwargs.get("input_ids", args[0] if args else None)
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    return (ids if torch.is_tensor(ids) else None), (mask if torch.is_tensor(mask) else None)


def _plan_start(model: Any, n_layers: int) -> int:
    """Index of the first layer the model's plan changes (``n_layers`` for the dense model)."""
    plan = getattr(model.config, "blockprune_plan", None)
    blocks = (plan or {}).get("blocks") or ()
    return min(int(b) for b in blocks) if blocks else n_layers


@contextmanager
def recording(model: Any, root: str | os.PathLike[str], layers: Iterable[int]) -> Iterator[ReplayStats]:
    """``with recording(dense, root, layers):`` every forward pass saves the hidden states after ``layers``
    (0-based) for its batch, unless already saved. Refuses a model that carries a plan."""
    if getattr(model.config, "blockprune_plan", None):
        raise ValueError("record the dense model's hidden states, not a pruned model's")
    store = _Store(Path(root))
    layer_list = adapter_for(model).layers(model)
    wanted = sorted({int(i) for i in layers})
    if any(not 0 <= i < len(layer_list) for i in wanted):
        raise ValueError(f"layers {wanted} outside 0..{len(layer_list) - 1}")
    stats = ReplayStats()
    current: dict[str, str | None] = {"key": None}

    def pre(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids, mask = _ids_and_mask(args, kwargs)
        current["key"] = None if ids is None or stats.stopped else batch_key(ids, mask)

    def saver(i: int) -> Any:
        def hook(_: Any, __: Any, output: Any) -> None:
            key = current["key"]
            if key is None:
                return
            if not torch.is_tensor(output):  # a layer returning a tuple: nothing to replay safely
                stats.stopped = f"layer {i} returns {type(output).__name__}, not a tensor"
                return
            if store.path(key, i).exists():
                return
            store.root.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(store.root).free < MIN_FREE_BYTES:
                stats.stopped = f"less than {MIN_FREE_BYTES >> 30} GiB free under {store.root}"
                return
            store.save(key, i, output)
            stats.saved += 1
        return hook

    handles = [model.register_forward_pre_hook(pre, with_kwargs=True)]
    handles += [layer_list[i].register_forward_hook(saver(i)) for i in wanted]
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()
        if stats.stopped:
            log.warning("prefix recording stopped: %s (later plans run those batches in full)", stats.stopped)


@contextmanager
def replaying(model: Any, root: str | os.PathLike[str]) -> Iterator[ReplayStats]:
    """``with replaying(pruned, root):`` batches recorded after a layer below the plan's first changed layer
    skip the layers up to it and continue from the recorded hidden states; others run in full."""
    store = _Store(Path(root))
    layer_list = adapter_for(model).layers(model)
    start = _plan_start(model, len(layer_list))
    usable = [c for c in store.layers() if c < start and c < len(layer_list)]
    stats = ReplayStats()
    if not usable:
        yield stats
        return
    c = max(usable)
    state: dict[str, torch.Tensor | None] = {"hidden": None}

    def pre(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids, mask = _ids_and_mask(args, kwargs)
        path = None if ids is None else store.path(batch_key(ids, mask), c)
        if path is not None and path.exists():
            state["hidden"] = torch.load(path, map_location=ids.device, weights_only=True)
            stats.hits += 1
            stats.skipped_layers = c + 1
        else:
            state["hidden"] = None
            stats.misses += 1

    def skipping(layer: Any, last: bool) -> Any:
        run = layer.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            hidden = state["hidden"]
            if hidden is None:
                return run(*args, **kwargs)
            if last:
                return hidden
            return args[0] if args else kwargs["hidden_states"]
        return forward

    handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    prefix = [layer_list[i] for i in range(c + 1)]
    own = [layer.__dict__.get("forward", _ABSENT) for layer in prefix]  # e.g. accelerate's dispatch wrapper
    for i, layer in enumerate(prefix):
        layer.forward = skipping(layer, i == c)
    try:
        yield stats
    finally:
        handle.remove()
        for layer, previous in zip(prefix, own, strict=True):
            if previous is _ABSENT:
                del layer.forward
            else:
                layer.forward = previous
        state["hidden"] = None
