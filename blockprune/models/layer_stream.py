"""Layer-major forward of a causal LM that need not fit in memory: one decoder layer at a time.

The model is instantiated on the meta device from its folder's config. The modules before the
decoder (token embedding, GPT-2's position table; rotary tables are buffers, built on the host
from the config) are loaded and every window is embedded; then each decoder layer in turn is read
from the checkpoint, run over ALL windows and freed; the final norm and LM head come last, for
perplexity. Each weight is read once, and memory holds about one layer plus the windows' hidden
states (which go to a spill file beyond a budget).

What a layer is called with comes from the model's own forward, never re-derived: during the
embedding pass the decoder layers are replaced by recorders that keep the positional and keyword
arguments the model passes each of them (rotary cos/sin of the layer's type, the causal or
sliding-window mask from transformers' mask helpers, position ids, ``cache=None``…) and hand the
hidden states on unchanged; the last recorder stops the forward before the final norm, which is not
loaded. The windows are unpadded and of equal length, so these arguments depend on the batch shape
only and are kept once per batch size. The head works the same way in reverse: the model's own
forward runs with one stand-in layer that injects the final hidden states, so the norm, the LM head
and any logit soft-capping (Gemma3) are the model's code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blockprune.models.adapters import Adapter, adapter_for_config, submodule, text_config
from blockprune.models.checkpoint import CheckpointReader, NotStreamableError

log = logging.getLogger(__name__)

GRANULARITIES = ("attention", "mlp")


# ------------------------------------------------------------------------------ hidden states


class HiddenStates:
    """The (n_windows, seq_len, hidden) states between two layers, in the compute dtype.

    Kept on the compute device when it is a GPU and they fit in ``device_budget``, else in host
    memory when they fit in ``host_budget``, else in a spill file read and written with
    ``pread``/``pwrite`` (not a memory map: mapped pages would count as resident memory and grow
    to the whole file as every layer sweeps over it). A batch is read, run through a layer and
    written back in place, so one buffer serves every layer.
    """

    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device,
                 host_budget: int, device_budget: int = 0, spill_dir: str | Path | None = None) -> None:
        self.shape = shape
        self.dtype = dtype
        self.device = device
        itemsize = torch.empty((), dtype=dtype).element_size()
        self.window_bytes = shape[1] * shape[2] * itemsize
        self.nbytes = shape[0] * self.window_bytes
        self.tensor: torch.Tensor | None = None
        self.fd: int | None = None
        self.path: Path | None = None
        if device.type != "cpu" and self.nbytes <= device_budget:
            self.where = str(device)
            self.tensor = torch.empty(shape, dtype=dtype, device=device)
        elif self.nbytes <= host_budget:
            self.where = "host"
            self.tensor = torch.empty(shape, dtype=dtype)
        else:
            self.where = "spill"
            fd, name = tempfile.mkstemp(prefix="blockprune-hidden-", suffix=".bin", dir=spill_dir)
            self.fd, self.path = fd, Path(name)
            os.ftruncate(fd, self.nbytes)

    def get(self, lo: int, hi: int) -> torch.Tensor:
        """Windows ``lo:hi`` on the compute device."""
        if self.tensor is not None:
            return self.tensor[lo:hi].to(self.device)
        out = torch.empty((hi - lo, *self.shape[1:]), dtype=self.dtype)
        view = memoryview(out.view(torch.uint8).numpy()).cast("B")
        pos, done = lo * self.window_bytes, 0
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], pos + done)
            if n <= 0:
                raise OSError(f"short read from the spill file {self.path}")
            done += n
        return out.to(self.device)

    def put(self, lo: int, t: torch.Tensor) -> None:
        if self.tensor is not None:
            self.tensor[lo : lo + len(t)].copy_(t)
            return
        data = t.detach().to("cpu", self.dtype).contiguous()
        view = memoryview(data.view(torch.uint8).numpy()).cast("B")
        pos, done = lo * self.window_bytes, 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], pos + done)

    def close(self) -> None:
        self.tensor = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


# ------------------------------------------------------------------------ stand-in layers


class _StopForward(Exception):
    """Raised by the last recorder: the decoder's inputs are known, the rest is not loaded."""


class _Recorder(nn.Module):
    """Keeps what the decoder passes layer ``index`` and hands the hidden states on unchanged."""

    def __init__(self, index: int, sink: dict[int, tuple[tuple, dict]], last: bool) -> None:
        super().__init__()
        self.index, self.sink, self.last = index, sink, last
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.sink[self.index] = (args, kwargs)
        if self.index == 0:
            self.hidden = hidden_states
        if self.last:
            raise _StopForward
        return hidden_states


class _Inject(nn.Module):
    """The only "layer" of the head pass: returns the final hidden states it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.value


# ------------------------------------------------------------------------------ the stream


def streaming_adapter(model_path: str | Path) -> tuple[Any, Adapter, CheckpointReader]:
    """(config, adapter, reader) of a local model folder, or one clear error; reads no weights."""
    from transformers import AutoConfig

    folder = Path(model_path)
    if not (folder / "config.json").exists():
        raise NotStreamableError(f"layer-streamed runs need a local model folder with config.json; got {model_path}")
    config = AutoConfig.from_pretrained(str(folder))
    adapter = adapter_for_config(config)  # UnsupportedArchitectureError (a BadInputError) names the supported ones
    if text_config(config) is not config:
        raise NotStreamableError(
            f"{folder}: {type(config).__name__} wraps a text decoder ({text_config(config).model_type}) in a "
            "multimodal model; layer-streamed runs need a plain causal LM folder"
        )
    return config, adapter, CheckpointReader(folder)


class LayerStream:
    """A causal LM on the meta device whose parts are read from its checkpoint one at a time.

    ``dtype`` is the compute dtype (weights are cast on read, as ``from_pretrained(dtype=…)`` does).
    ``head=True`` keeps what the final norm and LM head need (a tied LM head reuses the embedding
    tensor already read). ``prefetch=True`` reads the next layer in a background thread while the
    current one runs (two layers in memory; worth it when a GPU computes and the disk reads).
    """

    def __init__(self, model_path: str | Path, dtype: str = "float32", device: str | torch.device = "cpu",
                 head: bool = False, prefetch: bool = False) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        self.config, self.adapter, self.reader = streaming_adapter(model_path)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.device = torch.device(device)
        self.head = head
        with init_empty_weights(include_buffers=False):
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype)
        self.model.eval()
        try:
            self.layers = self.adapter.layers(self.model)
            for path in (self.adapter.embedding_path, self.adapter.final_norm_path, self.adapter.lm_head_path):
                submodule(self.model, path)
        except AttributeError as e:
            raise NotStreamableError(
                f"{type(self.model).__name__} does not have the module layout of the {self.adapter.family!r} "
                f"adapter ({e}); it cannot be streamed"
            ) from None
        self.n_layers = len(self.layers)
        self.hidden_size = int(text_config(self.config).hidden_size)
        self._keys = self._checkpoint_keys()
        for _, buf in self.model.named_buffers():
            if buf.device.type == "meta":
                raise NotStreamableError(f"{type(self.model).__name__} has buffers that cannot be built from the config")
        self._move_buffers(self.model, self.device)
        self._layer_args: dict[int, dict[int, tuple[tuple, dict]]] = {}  # batch size → layer → (args, kwargs)
        self._pool = ThreadPoolExecutor(1) if prefetch else None
        self._pending: dict[int, tuple[tuple[str, ...], Future]] = {}
        self.hidden: HiddenStates | None = None

    # ---------------------------------------------------------------- names and weights

    def _checkpoint_keys(self) -> dict[str, str]:
        """Model parameter name → checkpoint tensor name, every one checked before anything is read."""
        prefix = getattr(self.model, "base_model_prefix", "") + "."
        tied = bool(getattr(text_config(self.config), "tie_word_embeddings", False)) or bool(
            getattr(self.config, "tie_word_embeddings", False))
        head_w = self.adapter.lm_head_path + ".weight"
        emb_w = self.adapter.embedding_path + ".weight"
        keys, missing = {}, []
        for name, _ in self.model.named_parameters(remove_duplicate=False):
            for cand in (name, name[len(prefix):] if name.startswith(prefix) else None):
                if cand is not None and cand in self.reader:
                    keys[name] = cand
                    break
            else:
                if name == head_w and tied:
                    keys[name] = keys.get(emb_w, emb_w)
                else:
                    missing.append(name)
        if missing:
            raise NotStreamableError(
                f"{self.reader.folder}: the checkpoint lacks {len(missing)} weight(s) the model needs "
                f"(e.g. {', '.join(missing[:3])})"
            )
        return keys

    def _names(self, prefix: str) -> list[str]:
        p = prefix + "."
        return [n for n in self._keys if n.startswith(p)]

    def _embedding_stage_names(self) -> list[str]:
        layer_p = self.adapter.layers_path + "."
        late = (self.adapter.final_norm_path + ".", self.adapter.lm_head_path + ".")
        return [n for n in self._keys if not n.startswith(layer_p) and not n.startswith(late)]

    def _read(self, names: list[str]) -> dict[str, torch.Tensor]:
        """Checkpoint tensors of ``names``, cast to each meta parameter's dtype, on the host."""
        params = dict(self.model.named_parameters(remove_duplicate=False))
        targets = {self._keys[n]: (params[n].dtype, "cpu") for n in names}
        return self.reader.read(targets)

    def _install(self, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for n in names:
            set_module_tensor_to_device(self.model, n, self.device, value=tensors[self._keys[n]])

    def _free(self, names: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device

        for n in names:
            set_module_tensor_to_device(self.model, n, "meta")

    @staticmethod
    def _move_buffers(module: nn.Module, device: torch.device) -> None:
        for mod in module.modules():
            for key, buf in mod._buffers.items():
                if buf is not None and buf.device != device:
                    mod._buffers[key] = buf.to(device)

    # ---------------------------------------------------------------- the passes

    def embed(self, input_ids: np.ndarray, batches: list[tuple[int, int]], host_budget: int,
              device_budget: int = 0, spill_dir: str | Path | None = None) -> HiddenStates:
        """Embed every window (the model's own forward up to layer 0) and keep each layer's call arguments."""
        names = self._embedding_stage_names()
        self._install(names, self._read(names))
        n_windows, seq_len = input_ids.shape
        self.hidden = HiddenStates((n_windows, seq_len, self.hidden_size), self.dtype, self.device,
                                   host_budget, device_budget, spill_dir)
        original = list(self.layers)
        try:
            with torch.inference_mode():
                for lo, hi in batches:
                    sink: dict[int, tuple[tuple, dict]] = {}
                    recorders = [_Recorder(i, sink, i == self.n_layers - 1) for i in range(self.n_layers)]
                    for i, r in enumerate(recorders):
                        self.layers[i] = r
                    ids = torch.from_numpy(np.ascontiguousarray(input_ids[lo:hi])).to(self.device)
                    with contextlib.suppress(_StopForward):
                        self.model.base_model(input_ids=ids, use_cache=False)
                    if len(sink) != self.n_layers or recorders[0].hidden is None:
                        raise NotStreamableError(
                            f"{type(self.model).__name__}'s forward did not call its {self.n_layers} decoder layers "
                            "in order; it cannot be streamed"
                        )
                    self.hidden.put(lo, recorders[0].hidden)
                    self._layer_args.setdefault(hi - lo, sink)
        finally:
            for i, layer in enumerate(original):
                self.layers[i] = layer
        emb = self.adapter.embedding_path + ".weight"
        keep_tied = self.head and self._keys.get(self.adapter.lm_head_path + ".weight") == self._keys[emb]
        # the token table is the big part; the rest (GPT-2's position table) is small and the head pass needs it
        self._free([emb] if not keep_tied else [])
        return self.hidden

    def schedule(self, order: list[tuple[int, str | None]]) -> None:
        """The layers (and sub-block to drop, if any) that will be asked for, in order: enables prefetch."""
        self._order = list(order)

    def _layer_names(self, i: int, drop: str | None) -> list[str]:
        names = self._names(f"{self.adapter.layers_path}.{i}")
        if drop is not None:
            modules = self.adapter.attention_modules if drop == "attention" else self.adapter.mlp_modules
            skipped = tuple(f"{self.adapter.layers_path}.{i}.{m}." for m in modules)
            names = [n for n in names if not n.startswith(skipped)]
        return names

    def _submit(self, i: int, drop: str | None) -> None:
        if self._pool is not None and i not in self._pending:
            names = self._layer_names(i, drop)
            self._pending[i] = (tuple(names), self._pool.submit(self._read, names))

    @contextlib.contextmanager
    def layer(self, i: int, drop: str | None = None) -> Iterator[nn.Module]:
        """Decoder layer ``i`` with its weights loaded (its ``drop`` sub-block skipped, never read); freed on exit."""
        from blockprune.models.apply import skip_sublayer

        if drop is not None and drop not in GRANULARITIES:
            raise ValueError(f"drop must be one of {GRANULARITIES} or None, got {drop!r}")
        layer = self.layers[i]
        if drop is not None:
            skip_sublayer(layer, self.adapter, drop)
        names = self._layer_names(i, drop)
        if i in self._pending:
            _, fut = self._pending.pop(i)
            tensors = fut.result()
        else:
            tensors = self._read(names)
        order = getattr(self, "_order", [])
        nxt = next((k for k, (j, _) in enumerate(order) if j == i), None)
        if nxt is not None and nxt + 1 < len(order):
            self._submit(*order[nxt + 1])
        self._install(names, tensors)
        del tensors
        self._move_buffers(layer, self.device)
        try:
            yield layer
        finally:
            self._free(names)

    def forward_layer(self, layer: nn.Module, i: int, lo: int, hi: int) -> None:
        """Run windows ``lo:hi`` through loaded layer ``i`` with the model's own arguments, in place."""
        args, kwargs = self._layer_args[hi - lo][i]
        out = layer(self.hidden.get(lo, hi), *args, **kwargs)
        self.hidden.put(lo, out[0] if isinstance(out, tuple) else out)

    def load_head(self) -> None:
        """Load the final norm and the LM head (a tied head reuses the embedding tensor, not re-read)."""
        if not self.head:
            raise RuntimeError("this stream was opened with head=False")
        norm = self._names(self.adapter.final_norm_path)
        lm = self._names(self.adapter.lm_head_path)
        emb = self.adapter.embedding_path + ".weight"
        shared = [n for n in lm if self._keys[n] == self._keys.get(emb)]
        fresh = norm + [n for n in lm if n not in shared]
        self._install(fresh, self._read(fresh))
        if shared:
            from accelerate.utils import set_module_tensor_to_device

            table = submodule(self.model, self.adapter.embedding_path).weight
            for n in shared:
                set_module_tensor_to_device(self.model, n, self.device, value=table)

    def logits(self, lo: int, hi: int) -> torch.Tensor:
        """Logits of windows ``lo:hi`` from their final hidden states, through the model's own head code."""
        inject = _Inject()
        inject.value = self.hidden.get(lo, hi)
        saved = self.adapter.layers(self.model)
        self.adapter.set_layers(self.model, nn.ModuleList([inject]))
        try:
            # the stand-in discards its input; zeros keep GPT-2's position-table add harmless
            return self.model(inputs_embeds=torch.zeros_like(inject.value), use_cache=False).logits
        finally:
            self.adapter.set_layers(self.model, saved)

    def close(self) -> None:
        if self.hidden is not None:
            self.hidden.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pending.clear()

    def __enter__(self) -> LayerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def window_batches(n_windows: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous (lo, hi) window ranges of ``batch_size``, in order (the resident batching)."""
    return [(lo, min(lo + batch_size, n_windows)) for lo in range(0, n_windows, batch_size)]
