"""What every model (dense or pruned) is measured on: perplexity, parameters, lm-eval, latency, samples.

One function for both backends: the local backend calls it in this process, a Ray model actor calls it
on the model it holds, so both log the same metrics for the same job.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.windows import split_documents
from blockprune.errors import DiskSpaceError
from blockprune.evaluation.lm_eval_tasks import run_lm_eval
from blockprune.pipeline.config import EvalSettings
from blockprune.pipeline.prepare import Prepared
from blockprune.selection.plan import PrunePlan

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics of one model, the lm-eval results behind them, and the optional latency and samples."""

    metrics: dict[str, float]
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency: dict[str, Any] | None = None
    samples: list[dict[str, Any]] | None = None
    saved_to: str | None = None


def measure_model(model: Any, tokenizer: Any, windows: Any, ev: EvalSettings,
                  held_docs: list[str] | None = None, progress: bool = True) -> Evaluation:
    """Perplexity on ``windows``, parameter counts, rolling perplexity on ``held_docs``, lm-eval, latency and
    generation samples, each as ``ev`` asks. ``blockprune evaluate`` calls this directly."""
    from blockprune.evaluation.cost import count_parameters
    from blockprune.evaluation.perplexity import chunk_perplexity

    t0 = time.perf_counter()
    ppl = chunk_perplexity(model, windows, batch_size=ev.batch_size, progress=progress)
    params = count_parameters(model)
    metrics = {
        "ppl": ppl.perplexity,
        "nll": ppl.nll,
        "eval_tokens": ppl.n_tokens,
        "params_total": params["total"],
        "params_per_token": params["per_token"],
    }
    if held_docs:
        from blockprune.evaluation.perplexity import rolling_perplexity

        roll = rolling_perplexity(model, tokenizer, held_docs, batch_size=ev.batch_size)
        metrics |= {"rolling.word_perplexity": roll.word_perplexity, "rolling.byte_perplexity": roll.byte_perplexity,
                    "rolling.bits_per_byte": roll.bits_per_byte}
    tasks: dict[str, dict[str, Any]] = {}
    if ev.tasks:

        # JSON types only: the same record whether it is logged here or shipped back from a Ray actor
        tasks = json.loads(json.dumps(run_lm_eval(model, tokenizer, list(ev.tasks), limit=ev.limit,
                                                  batch_size=ev.batch_size), default=str))
        for task, vals in tasks.items():
            for k, v in vals.items():
                if isinstance(v, int | float):
                    metrics[f"{task}.{k}"] = float(v)
    metrics["eval_seconds"] = time.perf_counter() - t0
    out = Evaluation(metrics, tasks)
    if ev.latency:
        from blockprune.evaluation.cost import measure_latency

        out.latency = measure_latency(model, tokenizer).to_dict()
        out.metrics |= {f"latency.{k}": v for k, v in out.latency.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)}
    if ev.samples:
        from blockprune.evaluation.generation import generate_samples

        out.samples = generate_samples(model, tokenizer)
    return out


def evaluate_model(model: Any, p: Prepared, progress: bool = True) -> Evaluation:
    """:func:`measure_model` with a prepared job's held-out windows, documents and evaluation settings."""
    ev = p.job.evaluation
    held = None
    if ev.rolling_docs:

        held = split_documents(load_corpus(p.eval_corpus, p.job.text_field))[1][: ev.rolling_docs]
    return measure_model(model, p.tokenizer, p.eval_windows, ev, held, progress)


def meta_parameters(model_path: str, plan: PrunePlan | None) -> dict[str, Any]:
    """Parameter counts of a model (pruned by ``plan``) built on the meta device: no weight is loaded."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from blockprune.evaluation.cost import count_parameters
    from blockprune.models.apply import apply_plan

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    model.tie_weights()
    if plan is not None:
        apply_plan(model, plan)
    return count_parameters(model)


def measure_streamed(p: Prepared, plan: PrunePlan | None, device: str, progress: bool = True) -> Evaluation:
    """Perplexity of the dense model or a plan, layer by layer from the checkpoint (a model larger than memory),
    and its parameter counts from the config. What needs the whole model in memory (lm-eval, latency,
    samples, rolling perplexity, saving) is skipped, and the log says so."""
    from blockprune.evaluation.streamed_perplexity import streamed_chunk_perplexity

    ev = p.job.evaluation
    skipped = [name for name, on in (("lm-eval tasks", ev.tasks), ("latency", ev.latency), ("samples", ev.samples),
                                     ("rolling perplexity", ev.rolling_docs), ("--save-dir", p.job.save_dir)) if on]
    if skipped:
        log.warning("streamed run: %s skipped (they need the whole model in memory)", ", ".join(skipped))
    t0 = time.perf_counter()
    ppl = streamed_chunk_perplexity(p.resolved.path, p.eval_windows, plan, dtype=p.job.dtype, device=device,
                                    batch_size=ev.batch_size, progress=progress)
    params = meta_parameters(p.resolved.path, plan)
    return Evaluation({"ppl": ppl.perplexity, "nll": ppl.nll, "eval_tokens": ppl.n_tokens,
                       "params_total": params["total"], "params_per_token": params["per_token"],
                       "eval_seconds": time.perf_counter() - t0})


def pruned_name(p: Prepared, plan: PrunePlan) -> str:
    """Folder name of a saved pruned model: model, method, granularity and how many blocks went."""
    return f"{p.resolved.name}-{plan.method}-{plan.granularity}-{len(plan.blocks)}"


def evaluate_plan(model: Any, p: Prepared, plan: PrunePlan | None, save_dir: str | None = None, *,
                  progress: bool = True) -> Evaluation:
    """The dense model (``plan=None``) or the plan applied to it, measured, and saved when ``save_dir`` is set.

    The plan is applied in place and undone afterwards (:func:`~blockprune.models.apply.applied`): no copy of
    the weights, so a model that barely fits can still have every plan evaluated on it."""
    from blockprune.models.apply import applied, save_pruned

    if plan is None:
        return evaluate_model(model, p, progress)
    with applied(model, plan) as pruned:
        out = evaluate_model(pruned, p, progress)
        if save_dir:
            dest = Path(save_dir) / pruned_name(p, plan)
            try:
                save_pruned(pruned, plan, dest, p.tokenizer)
            except OSError as e:  # the free-space check ran before weights loaded; another writer may have filled it
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                shutil.rmtree(dest, ignore_errors=True)
                raise DiskSpaceError(f"no space left to save the pruned model in {dest} ({e.strerror}); the "
                                     "partial folder was removed") from None
            out.saved_to = str(dest)
    return out
