"""Held-out perplexity, the way the pruning papers report it.

"chunk" perplexity: held-out text concatenated, cut into ``seq_len`` windows with BOS first
(see :func:`blockprune.calibration.windows.heldout_windows`), each window scored independently;
the BOS position is context, never a prediction target. This is exp(mean NLL per predicted
token) and is NOT comparable to lm-eval's rolling word/byte perplexity, which
:mod:`blockprune.evaluation.lm_eval_tasks` reports separately under its own names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from blockprune.calibration.capture import input_device
from blockprune.calibration.windows import TokenWindows


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float
    n_tokens: int
    n_windows: int
    seq_len: int
    kind: str = "chunk"


LOGITS_BUDGET_BYTES = 256 << 20  # fp32 logits held at once: bounds the memory the output head adds
_POSITIONS_PER_STEP = 64  # positions whose log-softmax is taken at once


def _nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``target`` (rows × positions) under ``logits`` (rows × positions × vocab)."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    return torch.nn.functional.cross_entropy(flat, target.reshape(-1), reduction="none").view(target.shape)


def chunk_perplexity(model: Any, windows: TokenWindows, batch_size: int = 4, progress: bool = True,
                     logits_budget: int = LOGITS_BUDGET_BYTES) -> PerplexityResult:
    """Perplexity of held-out windows, ``batch_size`` windows per forward pass.

    The logits of a window are seq_len × vocabulary floats (155 MB for 256 tokens of Qwen's 152k
    vocabulary), so a batch holds no more windows than fit ``logits_budget``, and the log-softmax is
    taken a few positions at a time instead of over the whole batch at once. Small vocabularies keep
    the requested batch size.
    """
    device = input_device(model)
    ids = torch.from_numpy(windows.input_ids)
    vocab = int(model.get_output_embeddings().weight.shape[0])
    rows_fit = max(1, logits_budget // (ids.shape[1] * vocab * 4))
    step = max(1, min(batch_size, rows_fit))
    total_nll = 0.0
    total = 0
    with torch.inference_mode():
        for i in tqdm(range(0, len(ids), step), desc="perplexity", disable=not progress):
            batch = ids[i : i + step].to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            target = batch[:, 1:].to(logits.device)
            n = target.shape[1]  # the last position predicts nothing
            nll = torch.cat([_nll(logits[:, s : min(s + _POSITIONS_PER_STEP, n)], target[:, s : s + _POSITIONS_PER_STEP])
                             for s in range(0, n, _POSITIONS_PER_STEP)], dim=1)
            del logits
            if not torch.isfinite(nll).all():
                raise FloatingPointError("non-finite log-likelihood while computing perplexity")
            total_nll += float(nll.sum())
            total += nll.numel()
    mean = total_nll / total
    return PerplexityResult(math.exp(mean), mean, total, len(ids), int(ids.shape[1]))


@dataclass(frozen=True)
class RollingPerplexityResult:
    """lm-eval "wikitext"-style metrics: whole documents scored with rolling windows."""

    word_perplexity: float
    byte_perplexity: float
    bits_per_byte: float
    n_documents: int
    n_words: int
    n_bytes: int
    max_length: int
    kind: str = "rolling"


def rolling_perplexity(model: Any, tokenizer: Any, documents: list[str], max_length: int = 2048,
                       batch_size: int = 4) -> RollingPerplexityResult:
    """Word/byte perplexity through lm-eval's own ``loglikelihood_rolling``, as its wikitext task does.

    Each document is scored in full with disjoint rolling windows of ``max_length`` tokens (the
    first predicted from the model's prefix token); word and byte counts are of the raw text. Not
    comparable with :func:`chunk_perplexity`, which is per token over BOS-first chunks.
    """
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    if not documents:
        raise ValueError("rolling perplexity needs at least one document")
    device = str(input_device(model))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=device)
    requests = [Instance("loglikelihood_rolling", {}, (doc,), i) for i, doc in enumerate(documents)]
    ll = sum(lm.loglikelihood_rolling(requests, disable_tqdm=True))
    words = sum(len(d.split()) for d in documents)
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    return RollingPerplexityResult(math.exp(-ll / words), math.exp(-ll / n_bytes), -ll / (n_bytes * math.log(2)),
                                   len(documents), words, n_bytes, max_length)
