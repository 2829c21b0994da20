"""Replaying the dense model's recorded hidden states gives a pruned model exactly the logits it computes
itself, skips the unchanged layers' compute, and falls back to the full pass for anything not recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import FAMILIES, tiny_model

from blockprune.evaluation.prefix_replay import batch_key, recording, replay_dir, replaying
from blockprune.models.adapters import adapter_for
from blockprune.models.apply import applied
from blockprune.selection.plan import PrunePlan


def _plan(model: Any, blocks: tuple[int, ...], granularity: str = "layer") -> PrunePlan:
    n = adapter_for(model).n_layers(model.config)
    return PrunePlan(model_id="tiny", revision=None, n_blocks=n, blocks=blocks, granularity=granularity,  # type: ignore[arg-type]
                     method="test")


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 97, (3, 11), generator=g), torch.randint(0, 97, (2, 7), generator=g)]


def _attention_calls(model: Any) -> tuple[list[int], list[Any]]:
    """Counts each layer's attention calls: a replayed layer never reaches its sub-blocks."""
    adapter = adapter_for(model)
    calls = [0] * len(adapter.layers(model))
    handles = [getattr(layer, adapter.attention).register_forward_hook(
        lambda *_, _i=i: calls.__setitem__(_i, calls[_i] + 1)) for i, layer in enumerate(adapter.layers(model))]
    return calls, handles


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("granularity,blocks", [("layer", (3, 5)), ("attention", (4,)), ("mlp", (2, 3))])
def test_replayed_logits_equal_the_full_pass(family: str, granularity: str, blocks: tuple[int, ...],
                                             tmp_path: Path) -> None:
    model = tiny_model(family)
    batches = _batches()
    with torch.no_grad():
        with recording(model, tmp_path, layers=[0, 1, 2, 4]) as rec:
            dense = [model(input_ids=b, use_cache=False).logits for b in batches]
        with applied(model, _plan(model, blocks, granularity)) as pruned:
            want = [pruned(input_ids=b, use_cache=False).logits for b in batches]
            with replaying(pruned, tmp_path) as rep:
                got = [pruned(input_ids=b, use_cache=False).logits for b in batches]
        again = [model(input_ids=b, use_cache=False).logits for b in batches]  # hooks and skips all undone
    assert rec.saved == 4 * len(batches) and rec.stopped is None
    assert rep.hits == len(batches) and rep.misses == 0
    assert rep.skipped_layers == max(c for c in (0, 1, 2, 4) if c < min(blocks)) + 1
    for w, g, d, a in zip(want, got, dense, again, strict=True):
        assert torch.equal(w, g)
        assert torch.equal(d, a)
        assert not torch.equal(w, d)  # the plan did change the output: equality above is not vacuous


def test_replay_skips_the_prefix_layers(tmp_path: Path) -> None:
    model = tiny_model("qwen2")
    b = _batches()[0]
    with torch.no_grad(), recording(model, tmp_path, layers=[2]):
        model(input_ids=b)
    calls, handles = _attention_calls(model)
    try:
        with torch.no_grad(), applied(model, _plan(model, (4,))) as pruned, replaying(pruned, tmp_path):
            pruned(input_ids=b)
    finally:
        for h in handles:
            h.remove()
    # layers 0-2 replayed, 3 and 5 run, 4 removed
    assert calls == [0, 0, 0, 1, 0, 1]


def test_unrecorded_batches_and_late_plans_run_in_full(tmp_path: Path) -> None:
    model = tiny_model("llama")
    seen, unseen = _batches()
    with torch.no_grad():
        with recording(model, tmp_path, layers=[3]):
            model(input_ids=seen)
        with applied(model, _plan(model, (2,))) as pruned, replaying(pruned, tmp_path) as early:
            pruned(input_ids=seen)  # layer 3 is past the plan's first change: not usable
        with applied(model, _plan(model, (5,))) as pruned:
            full = pruned(input_ids=unseen).logits
            with replaying(pruned, tmp_path) as late:
                got = pruned(input_ids=unseen).logits
                hit = pruned(input_ids=seen).logits
            hit_full = pruned(input_ids=seen).logits
    assert early.hits == 0 and early.misses == 0  # nothing usable: no hooks at all
    assert late.misses == 1 and late.hits == 1 and late.skipped_layers == 4
    assert torch.equal(full, got) and torch.equal(hit, hit_full)


def test_recording_is_for_the_dense_model_and_checks_layers(tmp_path: Path) -> None:
    model = tiny_model("qwen2")
    with (applied(model, _plan(model, (1,))) as pruned, pytest.raises(ValueError, match="dense"),
          recording(pruned, tmp_path, layers=[0])):
        pass
    with pytest.raises(ValueError, match="outside"), recording(model, tmp_path, layers=[6]):
        pass


def test_keys_and_store_names_follow_what_the_hidden_states_depend_on(tmp_path: Path) -> None:
    ids = torch.tensor([[1, 2, 3, 0]])
    assert batch_key(ids) == batch_key(ids.clone())
    assert batch_key(ids) != batch_key(torch.tensor([[1, 2, 3, 4]]))
    assert batch_key(ids) != batch_key(ids.view(2, 2))
    assert batch_key(ids) != batch_key(ids, torch.tensor([[1, 1, 1, 0]]))
    a = replay_dir(tmp_path, "m", {"dtype": "bfloat16"})
    assert a == replay_dir(tmp_path, "m", {"dtype": "bfloat16"}) and a.parent == tmp_path
    assert a != replay_dir(tmp_path, "m", {"dtype": "float32"})


@pytest.mark.integration
def test_perplexity_and_lm_eval_unchanged_by_replay(smollm2: tuple[Any, Any], tmp_path: Path) -> None:
    """The real model through the two evaluations a study runs: equal numbers with and without replay."""
    from blockprune.calibration.corpora import load_corpus
    from blockprune.calibration.windows import heldout_windows
    from blockprune.evaluation.lm_eval_tasks import run_lm_eval
    from blockprune.evaluation.perplexity import chunk_perplexity

    model, tok = smollm2
    windows = heldout_windows(tok, load_corpus("wikipedia"), 64, 6)
    plan = PrunePlan(model_id=model.config.blockprune_source["model_id"], revision=None, n_blocks=30,
                     blocks=(20, 25), granularity="layer", method="test")

    def evaluate(net: Any) -> tuple[float, dict[str, Any]]:
        ppl = chunk_perplexity(net, windows, batch_size=4, progress=False).perplexity
        return ppl, run_lm_eval(net, tok, ["arc_easy"], limit=12, batch_size=4)

    with recording(model, tmp_path, layers=[10, 19]) as rec:
        dense = evaluate(model)
    with applied(model, plan) as pruned:
        want = evaluate(pruned)
        with replaying(pruned, tmp_path) as rep:
            got = evaluate(pruned)
    assert rec.saved > 0 and rep.misses == 0 and rep.hits > 0 and rep.skipped_layers == 20
    assert got == want and want != dense
