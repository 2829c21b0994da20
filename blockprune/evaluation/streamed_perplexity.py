"""Chunk perplexity of a dense or pruned model, computed one decoder layer at a time.

The forward is layer-major (:class:`blockprune.models.layer_stream.LayerStream`), so a plan for a
model that does not fit in memory can still be evaluated. The perplexity itself is computed by
:func:`blockprune.evaluation.perplexity.chunk_perplexity`, the resident function, handed a stand-in
"model" that serves each batch's logits from the final hidden states: one definition (windows,
batching, NLL, sum), not two that could drift apart. A plan is executed as
:func:`blockprune.models.apply.apply_plan` would: a removed layer is never read, a removed attention
/ MLP sub-block is replaced by the same stand-in and its weights are never read.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from blockprune.calibration.windows import TokenWindows
from blockprune.evaluation.perplexity import PerplexityResult, chunk_perplexity
from blockprune.models.adapters import submodule
from blockprune.models.apply import PlanMismatchError
from blockprune.models.layer_stream import LayerStream, window_batches
from blockprune.selection.plan import PrunePlan

log = logging.getLogger(__name__)


class _StreamedLogits:
    """What ``chunk_perplexity`` asks of a model, answered from a LayerStream whose layers have run.

    Batches must come in window order (they do: consecutive slices); each call checks that the ids
    it is given are the next windows, so a change in that order fails loudly instead of silently.
    """

    def __init__(self, stream: LayerStream, input_ids: np.ndarray) -> None:
        self.stream = stream
        self.ids = torch.from_numpy(input_ids)
        self.next = 0
        self._input = SimpleNamespace(weight=torch.empty(0, device=stream.device))

    def get_input_embeddings(self) -> Any:
        return self._input  # only its device is read

    def get_output_embeddings(self) -> Any:

        return submodule(self.stream.model, self.stream.adapter.lm_head_path)

    def __call__(self, input_ids: torch.Tensor, **_: Any) -> Any:
        lo, hi = self.next, self.next + len(input_ids)
        if not torch.equal(input_ids.cpu(), self.ids[lo:hi]):
            raise RuntimeError("chunk_perplexity asked for windows out of order; the streamed stand-in serves them in order")
        self.next = hi
        return SimpleNamespace(logits=self.stream.logits(lo, hi))


def streamed_chunk_perplexity(
    model_path: str | Path,
    windows: TokenWindows,
    plan: PrunePlan | None = None,
    *,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    host_budget: int | None = None,
    device_budget: int | None = None,
    spill_dir: str | Path | None = None,
    prefetch: bool = False,
    progress: bool = True,
    report: dict[str, Any] | None = None,
) -> PerplexityResult:
    """Perplexity of the model in ``model_path`` (pruned by ``plan`` when given), layer by layer.

    ``report``, when a dict, receives what the run read and where the hidden states lived.
    """
    from blockprune.calibration.streamed import hidden_budgets

    dev = torch.device(device)
    t0 = time.perf_counter()
    with LayerStream(model_path, dtype=dtype, device=dev, head=True, prefetch=prefetch) as stream:
        drop: dict[int, str | None] = {}
        if plan is not None:
            if plan.n_blocks != stream.n_layers:
                raise PlanMismatchError(
                    f"plan is for a model with {plan.n_blocks} layers, {model_path} has {stream.n_layers}")
            drop = {b: plan.granularity for b in plan.blocks}
        order = [(i, drop.get(i)) for i in range(stream.n_layers) if drop.get(i) != "layer"]
        ids = windows.input_ids
        batches = window_batches(len(ids), batch_size)
        host, dev_budget = hidden_budgets(dev, host_budget, device_budget)
        with torch.inference_mode():
            hs = stream.embed(ids, batches, host, dev_budget, spill_dir)
            stream.schedule(order)
            for i, sub in tqdm(order, desc="streamed perplexity", unit="layer", disable=not progress):
                with stream.layer(i, drop=sub) as layer:
                    for lo, hi in batches:
                        stream.forward_layer(layer, i, lo, hi)
            stream.load_head()
        result = chunk_perplexity(_StreamedLogits(stream, ids), windows, batch_size=batch_size, progress=False)
        info = {
            "weight_bytes_read": stream.reader.bytes_read,
            "weight_bytes_in_checkpoint": stream.reader.total_bytes(),
            "tensors_read_more_than_once": len(stream.reader.reread()),
            "layers_run": len(order),
            "hidden_states": hs.where,
            "seconds": time.perf_counter() - t0,
        }
    if report is not None:
        report.update(info)
    log.info("streamed perplexity %.3f over %d tokens (%d layers run, %.2f GiB of weights read) in %.1f s",
             result.perplexity, result.n_tokens, info["layers_run"], info["weight_bytes_read"] / 2**30,
             info["seconds"])
    return result
