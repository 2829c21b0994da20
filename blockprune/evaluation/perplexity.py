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


def chunk_perplexity(model: Any, windows: TokenWindows, batch_size: int = 4, progress: bool = True) -> PerplexityResult:
    device = input_device(model)
    ids = torch.from_numpy(windows.input_ids)
    total_nll = 0.0
    total = 0
    with torch.inference_mode():
        for i in tqdm(range(0, len(ids), batch_size), desc="perplexity", disable=not progress):
            batch = ids[i : i + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = batch[:, 1:].to(logp.device)
            nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            if not torch.isfinite(nll).all():
                raise FloatingPointError("non-finite log-likelihood while computing perplexity")
            total_nll += float(nll.sum())
            total += nll.numel()
    mean = total_nll / total
    return PerplexityResult(math.exp(mean), mean, total, len(ids), int(ids.shape[1]))
