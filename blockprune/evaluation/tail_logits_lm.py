"""lm-eval's HF model with the output head run only where the answer is scored.

Multiple-choice tasks score ``log p(continuation | context)``: only the continuation's positions need
logits. lm-eval's ``HFLM`` computes logits (and a log-softmax) over the whole padded batch, which on a
262k-token vocabulary (Gemma 3) costs more than the transformer itself and gigabytes of memory traffic
per batch. This subclass runs the same forward pass, asks the model for logits of the batch's trailing
positions only (``logits_to_keep``, from the first continuation token of any row to the end) and scores
exactly as ``HFLM`` does: same request order, batches, padding, truncation and one-token-continuation
cache, so scores agree with ``HFLM`` to float rounding (tested) and accuracies are the same.

Only the causal, fixed-batch-size path is replaced; seq2seq models, ``batch_size="auto"`` and models
whose ``forward`` has no ``logits_to_keep`` fall back to ``HFLM``'s own code.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import Collator
from lm_eval.models.utils_hf import pad_and_concat

Request = tuple[tuple[str, str], list[int], list[int]]


def supports_logits_to_keep(model: Any) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


class TailLogitsHFLM(HFLM):
    """``HFLM`` that computes output logits for the continuation positions only."""

    def _tail_path(self, override_bs: int | None) -> int | None:
        """The fixed batch size when the fast path applies, else ``None``."""
        if self.backend != "causal" or not supports_logits_to_keep(self.model):
            return None
        if self.batch_size == "auto":
            return override_bs
        return int(self.batch_size)

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        batch_size = self._tail_path(override_bs)
        if batch_size is None:
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        from tqdm.auto import tqdm

        reorder = Collator(
            requests,
            sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])),  # longest first, as HFLM
            group_by="contexts" if self.logits_cache else None,
            group_fn=lambda r: r[-2] + r[-1][:-1],  # one-token continuations sharing a context: one forward
        )
        res: list[tuple[float, bool]] = []
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                    desc="Running loglikelihood requests")
        for chunk in reorder.get_batched(n=batch_size, batch_fn=None):
            inps, inplens, conts = [], [], []
            for _, context_enc, continuation_enc in chunk:
                if not context_enc or not continuation_enc or len(continuation_enc) > self.max_length:
                    raise ValueError("empty context/continuation, or a continuation longer than max_length")
                inp = torch.tensor((context_enc + continuation_enc)[-(self.max_length + 1):][:-1],
                                   dtype=torch.long, device=self.device)
                inps.append(inp)
                inplens.append(int(inp.shape[0]))
                conts.append(continuation_enc)
            padded = max(inplens)
            first = min(n - len(c) for n, c in zip(inplens, conts, strict=True))
            keep = padded - max(first, 0)
            batch = pad_and_concat(padded, inps, padding_side="right")
            logprobs = F.log_softmax(self._tail_call(batch, keep), dim=-1, dtype=self.softmax_dtype)
            offset = padded - keep  # logits row j is position offset + j
            for (request_str, ctx_tokens, _), row, inplen, cont_toks in zip(
                    chunk, logprobs, inplens, conts, strict=True):
                contlen = len(cont_toks)
                sel = row[inplen - contlen - offset: inplen - offset].unsqueeze(0)  # [1, contlen, vocab]
                greedy = sel.argmax(dim=-1)
                for req_str, cont, lp in reorder.get_cache(req_str=request_str, cxt_toks=ctx_tokens,
                                                           cont_toks=cont_toks, logits=sel):
                    target = torch.tensor(cont, dtype=torch.long, device=self.device).unsqueeze(0)
                    exact = bool((greedy[:, -target.shape[1]:] == target).all())
                    score = float(torch.gather(lp, 2, target.unsqueeze(-1)).squeeze(-1).sum())
                    res.append((score, exact))
                    if req_str is not None:
                        self.cache_hook.add_partial("loglikelihood", req_str, (score, exact))
                    pbar.update(1)
        pbar.close()
        return reorder.get_original(res)

    def _tail_call(self, inps: torch.Tensor, keep: int) -> torch.Tensor:
        """``HFLM._model_call`` with logits for the last ``keep`` positions only."""
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            return self.model(inps, logits_to_keep=keep).logits
