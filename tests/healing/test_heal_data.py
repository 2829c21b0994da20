"""Training windows come only from the training split; the step order is fixed by (seed, step, rank)."""

from __future__ import annotations

from typing import Any

import pytest

from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.windows import distinct_documents, split_document_ids, split_documents
from blockprune.healing.config import HealConfig
from blockprune.healing.data import (
    NotEnoughTrainingTokensError,
    StepBatchSampler,
    check_budget,
    training_windows,
    window_order,
)
from blockprune.healing.module import lr_factor

pytestmark = pytest.mark.unit


def test_split_ids_are_the_split_perplexity_uses() -> None:
    corpus = load_corpus("lee-news")
    train_ids, held_ids = split_document_ids(corpus)
    docs = distinct_documents(corpus)
    calib, held = split_documents(corpus)
    assert [docs[i] for i in held_ids] == held and [docs[i] for i in train_ids] == calib
    assert set(train_ids).isdisjoint(held_ids) and len(train_ids) + len(held_ids) == len(docs)


@pytest.mark.parametrize("names", [("lee-news",), ("lee-news", "wikipedia")])
def test_training_windows_never_hold_heldout_documents(tokenizer: Any, names: tuple[str, ...]) -> None:
    corpora = [load_corpus(n) for n in names]
    tw = training_windows(tokenizer, corpora, 128)
    seen = tw.window_documents(range(len(tw)))
    for corpus in corpora:
        train_ids, held_ids = split_document_ids(corpus)
        mine = {i for name, i in seen if name == corpus.name}
        assert mine.isdisjoint(held_ids)
        assert mine <= set(train_ids) and len(mine) > 0.9 * len(train_ids)  # nearly every training doc is used
    assert (tw.input_ids[:, 0] == tokenizer.bos_token_id).all()
    # the ids map back to the text: the first window's body is the start of the first training document
    first = distinct_documents(corpora[0])[split_document_ids(corpora[0])[0][0]]
    assert first.startswith(tokenizer.decode(tw.input_ids[0, 1:20]).strip()[:40])


def test_budget_beyond_the_training_split_is_refused(tokenizer: Any) -> None:
    tw = training_windows(tokenizer, [load_corpus("lee-news")], 256)
    fits = len(tw) // 8
    check_budget(tw, fits, 8, 256)
    with pytest.raises(NotEnoughTrainingTokensError, match=f"at most {fits} steps fit"):
        check_budget(tw, fits + 1, 8, 256)


def test_step_order_is_the_same_for_any_split_of_the_global_batch() -> None:
    order = window_order(100, seed=3)
    one = list(StepBatchSampler(order, micro=2, accum=4, world=1, rank=0, total_steps=10))
    two = [list(StepBatchSampler(order, micro=2, accum=2, world=2, rank=r, total_steps=10)) for r in (0, 1)]
    for step in range(10):
        single = sorted(i for b in one[step * 4:(step + 1) * 4] for i in b)
        split = sorted(i for r in (0, 1) for b in two[r][step * 2:(step + 1) * 2] for i in b)
        assert single == split == sorted(order[step * 8:(step + 1) * 8].tolist())
    sampler = StepBatchSampler(order, micro=2, accum=4, world=1, rank=0, total_steps=10, start_step=6)
    assert list(sampler) == one[6 * 4:]
    assert len(sampler) == 40  # the whole run's micro-batches: what Lightning's restored counters expect
    flat = [i for b in one for i in b]
    assert len(flat) == len(set(flat))  # no window twice


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    f = [lr_factor(s, 4, 20, 0.1) for s in range(21)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and f[4] == 1.0
    assert all(a >= b for a, b in zip(f[4:], f[5:], strict=False))
    assert f[20] == pytest.approx(0.1)


def test_tokens_budget_sets_the_step_count() -> None:
    cfg = HealConfig(tokens=10_000, batch_size=8, seq_len=256)
    assert cfg.total_steps == 5 and cfg.budget_tokens == 5 * 8 * 256
    with pytest.raises(ValueError, match="not a multiple"):
        HealConfig(batch_size=6, micro_batch=4).accumulation(1)
    assert HealConfig.from_spec({"steps": 50, "rank": 8, "corpus": "lambada"}).lora.rank == 8
    with pytest.raises(ValueError, match="unknown key"):
        HealConfig.from_spec({"stepz": 5})
    assert HealConfig.from_dict(HealConfig().to_dict()) == HealConfig()


def test_sweep_precheck_needs_no_plan_and_no_weights() -> None:
    from blockprune.healing.config import LoraSettings
    from blockprune.healing.lora import UnknownTargetModuleError
    from blockprune.healing.run import precheck_heal

    precheck_heal("smollm2-135m", HealConfig(corpora=("lee-news",), steps=10))
    with pytest.raises(NotEnoughTrainingTokensError):
        precheck_heal("smollm2-135m", HealConfig(corpora=("lee-news",), steps=10_000))
    with pytest.raises(UnknownTargetModuleError, match="c_attn"):
        precheck_heal("smollm2-135m", HealConfig(corpora=("lee-news",), steps=10, lora=LoraSettings(targets=("c_attn",))))
