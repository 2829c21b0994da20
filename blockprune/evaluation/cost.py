"""What a (pruned) model costs: parameters, FLOPs per token, latency and memory.

Why: removing blocks is only worth it if it buys speed or memory, so every plan is reported next to
the compute it removes and the speed-up actually measured.

Definitions (used throughout blockprune and in MLflow):

* ``total``      -- distinct parameters (tied tensors counted once).
* ``embedding``  -- parameters of lookup tables (every ``nn.Embedding``: token and, where present,
  learned position embeddings). A lookup costs no multiply-adds.
* ``lm_head``    -- size of the output projection, whether or not it is tied to the input embedding.
* ``per_token``  -- non-embedding parameters used for every token: ``total - embedding``, which
  includes the lm_head when it is untied (a tied head shares the embedding tensor and is not
  counted again). This is the usual "non-embedding parameter" count.
* ``per_token_matmul`` -- parameters that take part in a matmul for every token: ``per_token`` plus
  the lm_head when it is tied (the tied head still does a vocab × hidden matmul). FLOPs follow it.
* FLOPs per token ≈ ``2 · per_token_matmul + 4 · n_layers · context · n_heads · head_dim``
  (multiply-add = 2 FLOPs; the attention term counts QKᵀ and the weighted sum over ``context``
  cached positions, as in Hoffmann et al. 2022). Norms, softmax and activations are ignored.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

CPU_PROMPT_LEN = 256
CPU_GEN_LEN = 32
GPU_PROMPT_LEN = 1024
GPU_GEN_LEN = 128


def count_parameters(model: nn.Module) -> dict[str, Any]:
    """Parameter counts by role (see module docstring for the definitions)."""
    params = list(model.parameters())  # deduplicated: tied tensors appear once
    total = sum(p.numel() for p in params)
    seen: set[int] = set()
    embedding = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            for p in module.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    embedding += p.numel()
    lm_head = 0
    tied = False
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None:
        lm_head = sum(p.numel() for p in out.parameters(recurse=False))
        tied = any(id(p) in seen for p in out.parameters(recurse=False))
    per_token = total - embedding
    config = getattr(model, "config", None)
    return {
        "total": total,
        "embedding": embedding,
        "lm_head": lm_head,
        "tied_lm_head": tied,
        "per_token": per_token,
        "per_token_matmul": per_token + (lm_head if tied else 0),
        "n_layers": _n_layers(config) if config is not None else None,
    }


def _text_config(config: Any) -> Any:
    """The decoder's config (multimodal wrappers keep it in ``text_config``)."""
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


def _n_layers(config: Any) -> int | None:
    text = _text_config(config)
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text, key, None)
        if isinstance(value, int):
            return value
    return None


def _attention_width(config: Any) -> int:
    """n_heads · head_dim (the width of Q and of the attention output)."""
    text = _text_config(config)
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    head_dim = getattr(text, "head_dim", None) or (hidden // heads if heads and hidden else None)
    if not heads or not head_dim:
        raise ValueError("cannot read num_attention_heads/head_dim from the model config")
    return int(heads) * int(head_dim)


def flops_per_token(model: nn.Module, context: int = 0, lm_head: bool = True) -> float:
    """Forward FLOPs for one token that attends to ``context`` positions (see module docstring).

    For a prefill of P tokens under a causal mask the mean context is (P + 1) / 2; for the t-th
    decoded token after a prompt of P it is P + t. ``lm_head=False`` leaves out the output
    projection, for positions whose logits are not computed (all but the last of a prefill).
    """
    counts = count_parameters(model)
    n_layers = counts["n_layers"] or 0
    matmul = counts["per_token_matmul"] - (0 if lm_head else counts["lm_head"])
    return 2.0 * matmul + 4.0 * n_layers * context * _attention_width(model.config)


def prefill_flops_per_token(model: nn.Module, prompt_len: int) -> float:
    """Mean FLOPs per prompt token of a prefill that computes logits only for the last position
    (what ``generate`` and :func:`measure_latency` do)."""
    counts = count_parameters(model)
    body = flops_per_token(model, context=0, lm_head=False)
    attention = flops_per_token(model, context=prompt_len, lm_head=False) - body
    mean_attention = attention * (prompt_len + 1) / (2 * prompt_len)  # causal: mean context (P+1)/2
    return body + mean_attention + 2.0 * counts["lm_head"] / prompt_len


def decode_flops_per_token(model: nn.Module, prompt_len: int, gen_len: int) -> float:
    """Mean FLOPs per generated token when decoding ``gen_len`` tokens after ``prompt_len``."""
    body = flops_per_token(model, context=0)
    per_context = flops_per_token(model, context=1) - body
    return body + per_context * (prompt_len + (gen_len + 1) / 2)


@dataclass(frozen=True)
class LatencyResult:
    """Medians over ``repeats`` timed runs (after ``warmup`` untimed ones)."""

    device: str
    dtype: str
    batch_size: int
    prompt_len: int
    gen_len: int
    repeats: int
    warmup: int
    threads: int
    prefill_s: float
    decode_s: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    peak_memory_bytes: int
    memory_kind: str  # "rss_peak" (CPU, sampled process RSS) or "cuda_max_allocated"
    prefill_s_all: tuple[float, ...]
    decode_s_all: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _RssSampler:
    """Peak resident set size of this process while the block runs (sampled every few ms)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process(os.getpid())
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _vocab_size(model: nn.Module, tokenizer_or_vocab: Any) -> int:
    if isinstance(tokenizer_or_vocab, int):
        return tokenizer_or_vocab
    if tokenizer_or_vocab is not None:
        return len(tokenizer_or_vocab)
    return int(_text_config(model.config).vocab_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.inference_mode()
def _one_run(
    model: nn.Module, ids: torch.Tensor, gen_len: int, device: torch.device, last_only: bool
) -> tuple[float, float]:
    """(prefill seconds, decode seconds) for one prompt batch and ``gen_len`` greedy steps."""
    extra = {"logits_to_keep": 1} if last_only else {}
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, **extra)
    next_ids = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t1 = time.perf_counter()
    past = out.past_key_values
    for _ in range(gen_len):
        out = model(input_ids=next_ids, past_key_values=past, use_cache=True, **extra)
        past = out.past_key_values
        next_ids = out.logits[:, -1:].argmax(-1)
    _sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def measure_latency(
    model: nn.Module,
    tokenizer_or_vocab: Any = None,
    prompt_len: int | None = None,
    gen_len: int | None = None,
    repeats: int = 3,
    warmup: int = 1,
    batch_size: int = 1,
    seed: int = 0,
) -> LatencyResult:
    """Prefill and decode throughput of ``model`` where it currently lives.

    One run = a forward over ``batch_size × prompt_len`` random token ids (KV cache on, logits
    only for the last position, as ``generate`` does), then ``gen_len`` single-token greedy steps
    reusing the cache. Token ids are random because speed does not depend on them.
    Defaults: 1024 prompt / 128 generated tokens on CUDA, 256 / 32 on CPU (2 shared cores make the
    GPU sizes take minutes per run). Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA
    and the peak process RSS sampled during the timed runs on CPU (weights included).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    on_gpu = device.type == "cuda"
    prompt_len = prompt_len if prompt_len is not None else (GPU_PROMPT_LEN if on_gpu else CPU_PROMPT_LEN)
    gen_len = gen_len if gen_len is not None else (GPU_GEN_LEN if on_gpu else CPU_GEN_LEN)
    if prompt_len < 1 or gen_len < 1 or batch_size < 1:
        raise ValueError(
            f"prompt_len, gen_len, batch_size must be >= 1, got {prompt_len}, {gen_len}, {batch_size}"
        )
    max_pos = getattr(_text_config(model.config), "max_position_embeddings", None)
    if max_pos is not None and prompt_len + gen_len > max_pos:
        raise ValueError(
            f"prompt_len + gen_len = {prompt_len + gen_len} exceeds max_position_embeddings {max_pos}"
        )
    vocab = _vocab_size(model, tokenizer_or_vocab)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, prompt_len), generator=gen).to(device)
    last_only = _accepts_logits_to_keep(model)
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            _one_run(model, ids, gen_len, device, last_only)
        gc.collect()
        prefill, decode = [], []
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
            for _ in range(repeats):
                p, d = _one_run(model, ids, gen_len, device, last_only)
                prefill.append(p)
                decode.append(d)
            peak, kind = int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
        else:
            with _RssSampler() as sampler:
                for _ in range(repeats):
                    p, d = _one_run(model, ids, gen_len, device, last_only)
                    prefill.append(p)
                    decode.append(d)
            peak, kind = int(sampler.peak), "rss_peak"
    finally:
        model.train(was_training)
    prefill_s, decode_s = statistics.median(prefill), statistics.median(decode)
    return LatencyResult(
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        batch_size=batch_size,
        prompt_len=prompt_len,
        gen_len=gen_len,
        repeats=repeats,
        warmup=warmup,
        threads=torch.get_num_threads(),
        prefill_s=prefill_s,
        decode_s=decode_s,
        prefill_tokens_per_s=batch_size * prompt_len / prefill_s,
        decode_tokens_per_s=batch_size * gen_len / decode_s,
        peak_memory_bytes=peak,
        memory_kind=kind,
        prefill_s_all=tuple(prefill),
        decode_s_all=tuple(decode),
    )


def process_peak_rss_bytes() -> int:
    """Lifetime peak RSS of this process (``ru_maxrss``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
