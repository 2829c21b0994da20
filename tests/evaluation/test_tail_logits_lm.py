"""TailLogitsHFLM scores exactly as lm-eval's HFLM while running the output head on far fewer positions."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from blockprune.evaluation import lm_eval_tasks as L
from blockprune.evaluation.tail_logits_lm import TailLogitsHFLM, supports_logits_to_keep

CONTEXTS = [
    "The capital of France is",
    "Question: Which gas do plants take in from the air to make food?\nAnswer:",
    "She opened the umbrella because",
]
CONTINUATIONS = [" Paris", " a large city in Europe with many museums", " carbon dioxide", " oxygen", " it was"
                 " raining", " the sun", " A", " B"]


def _requests(lm: Any) -> list[tuple[tuple[str, str], list[int], list[int]]]:
    """Every context × continuation: shared contexts with one-token continuations (the logits cache),
    multi-token ones, and lengths that differ within a batch."""
    out = []
    for ctx in CONTEXTS:
        for cont in CONTINUATIONS:
            out.append(((ctx, cont), *lm._encode_pair(ctx, cont)))
    return out


def _both(model: Any, tok: Any, **kw: Any) -> tuple[Any, Any]:
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tok, **kw), TailLogitsHFLM(pretrained=model, tokenizer=tok, **kw)


def _head_positions(model: Any, run: Any) -> list[int]:
    """Sequence lengths the output head saw during ``run()``."""
    seen: list[int] = []
    h = model.get_output_embeddings().register_forward_hook(lambda _m, args, _o: seen.append(args[0].shape[-2]))
    try:
        run()
    finally:
        h.remove()
    return seen


@pytest.mark.integration
def test_scores_equal_hflm_with_fewer_head_positions(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    model.eval()
    stock, tail = _both(model, tok, batch_size=4)
    reqs = _requests(stock)
    want: list[Any] = []
    got: list[Any] = []
    stock_pos = _head_positions(model, lambda: want.extend(stock._loglikelihood_tokens(reqs, disable_tqdm=True)))
    tail_pos = _head_positions(model, lambda: got.extend(tail._loglikelihood_tokens(reqs, disable_tqdm=True)))
    assert len(got) == len(want) == len(reqs)
    for (ws, wg), (gs, gg) in zip(want, got, strict=True):
        assert gs == pytest.approx(ws, abs=1e-4)
        assert gg == wg
    assert len({round(s, 3) for s, _ in want}) > len(reqs) // 2  # real, distinct scores
    assert sum(tail_pos) < sum(stock_pos) / 2


@pytest.mark.integration
def test_truncation_from_the_left_matches_hflm(smollm2: tuple[Any, Any]) -> None:
    """Context + continuation longer than max_length: both keep the same last max_length tokens."""
    model, tok = smollm2
    stock, tail = _both(model, tok, batch_size=2, max_length=12)
    ctx = "In the beginning the river ran quietly past the mill and the old stone bridge, and then"
    reqs = [((ctx, c), *stock._encode_pair(ctx, c)) for c in (" it flooded the valley", " stopped")]
    assert len(reqs[0][1]) + len(reqs[0][2]) > 13
    want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    got = tail._loglikelihood_tokens(reqs, disable_tqdm=True)
    for (ws, wg), (gs, gg) in zip(want, got, strict=True):
        assert gs == pytest.approx(ws, abs=1e-4) and gg == wg


@pytest.mark.integration
def test_run_lm_eval_accuracy_is_unchanged(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    tasks = ["piqa", "arc_easy", "mmlu_anatomy"]
    fast = L.run_lm_eval(model, tok, tasks, limit=6, batch_size=8)
    slow = L.run_lm_eval(model, tok, tasks, limit=6, batch_size=8, tail_logits=False)
    for t in tasks:
        assert fast[t]["n"] == slow[t]["n"] > 0
        for metric in ("acc", "acc_norm"):
            if metric in slow[t]:
                assert fast[t][metric] == slow[t][metric], (t, metric)


@pytest.mark.integration
@pytest.mark.slow
def test_gemma3_scores_equal_hflm(gemma3: Any) -> None:
    """Gemma 3: 262k vocabulary, BOS added by lm-eval, and the head where most of the time went."""
    stock, tail = _both(gemma3.model, gemma3.tokenizer, batch_size=4)
    reqs = _requests(stock)[:12]
    want = stock._loglikelihood_tokens(reqs, disable_tqdm=True)
    got = tail._loglikelihood_tokens(reqs, disable_tqdm=True)
    for (ws, wg), (gs, gg) in zip(want, got, strict=True):
        assert gs == pytest.approx(ws, abs=1e-3) and gg == wg


@pytest.mark.unit
def test_models_without_logits_to_keep_use_hflm_code() -> None:
    class Plain(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids

    class Keeps(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
            return input_ids

    assert not supports_logits_to_keep(Plain())
    assert supports_logits_to_keep(Keeps())


@pytest.mark.integration
def test_bfloat16_autocast_scores_close_to_float32(smollm2: tuple[Any, Any]) -> None:
    """mixed_precision: the forward runs in bf16 (scores move) yet stays close to float32."""
    model, tok = smollm2
    fp32 = TailLogitsHFLM(pretrained=model, tokenizer=tok, batch_size=4)
    bf16 = TailLogitsHFLM(pretrained=model, tokenizer=tok, batch_size=4, mixed_precision_dtype="bfloat16",
                          softmax_dtype="float32")
    reqs = _requests(fp32)
    want = [s for s, _ in fp32._loglikelihood_tokens(reqs, disable_tqdm=True)]
    got = [s for s, _ in bf16._loglikelihood_tokens(reqs, disable_tqdm=True)]
    diffs = [abs(g - w) for g, w in zip(got, want, strict=True)]
    assert max(diffs) > 1e-3  # autocast did run in bf16
    assert all(d <= 0.1 * abs(w) + 0.5 for d, w in zip(diffs, want, strict=True))
    order = sorted(range(len(want)), key=want.__getitem__)
    assert sorted(range(len(got)), key=got.__getitem__)[-3:] == order[-3:]  # the likeliest answers agree


@pytest.mark.unit
def test_bad_mixed_precision_is_rejected_before_model_work() -> None:
    with pytest.raises(ValueError, match="mixed_precision"):
        L.run_lm_eval(None, None, ["piqa"], mixed_precision="int8")
