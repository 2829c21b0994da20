"""Layer-streamed capture and perplexity equal the resident ones on real pretrained weights.

smollm2-135m (Llama), gemma3-270m (windows of 640 tokens: longer than its 512-token sliding window,
so the sliding-window layers really mask) and qwen2.5-coder-0.5b (Qwen2). The store must hold the same
sampled positions, arrays equal to 1e-5 of each boundary's largest value (fp32; measured: equal to
the bit on this machine, as both paths run the same kernels on the same batch shapes), the same
BI / angular / relative-magnitude statistics to 1e-5, and give the same ShortGPT and
relative-magnitude plans; perplexity of a dense, a layer and an attention plan within 1e-4 relative.
"""

from __future__ import annotations

import pytest
from streamed_helpers import assert_same_store

from blockprune.calibration.capture import CaptureSettings, capture
from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.streamed import capture_streamed
from blockprune.calibration.windows import calibration_windows, heldout_windows
from blockprune.evaluation.perplexity import chunk_perplexity
from blockprune.evaluation.streamed_perplexity import streamed_chunk_perplexity
from blockprune.models.adapters import adapter_for
from blockprune.models.apply import apply_plan
from blockprune.models.zoo import BUNDLED
from blockprune.selection import select
from blockprune.selection.plan import PrunePlan

pytestmark = pytest.mark.integration

ARRAY_TOLERANCE = 1e-5  # of each boundary's largest |value|
PPL_TOLERANCE = 1e-4  # relative
QWEN = "qwen2.5-coder-0.5b"


def assert_same_plans(a, b, n_layers: int, prunes: tuple[int, ...]) -> None:
    for method, stat in (("shortgpt", "bi"), ("relative_magnitude", "relmag")):
        for g in ("layer", "attention", "mlp"):
            for k in prunes:
                pa = select(method, n_layers, k, block_scores=a.stats[g][stat]).blocks
                pb = select(method, n_layers, k, block_scores=b.stats[g][stat]).blocks
                assert pa == pb, (method, g, k)


def assert_read_once(store) -> None:
    info = store.manifest["streamed"]
    assert info["tensors_read_more_than_once"] == 0
    assert 0 < info["weight_bytes_read"] <= info["weight_bytes_in_checkpoint"]


def assert_same_perplexity(loaded, windows, plans: list[PrunePlan | None], batch_size: int) -> None:
    for plan in plans:
        model = apply_plan(loaded.fresh(), plan) if plan is not None else loaded.model
        want = chunk_perplexity(model, windows, batch_size=batch_size, progress=False)
        del model
        report: dict = {}
        got = streamed_chunk_perplexity(loaded.resolved.path, windows, plan, batch_size=batch_size, progress=False,
                                        report=report)
        assert got.n_tokens == want.n_tokens
        assert abs(got.perplexity / want.perplexity - 1) < PPL_TOLERANCE, (plan, got.perplexity, want.perplexity)
        assert report["tensors_read_more_than_once"] == 0


def _plan(loaded, n: int, blocks: tuple[int, ...], granularity: str) -> PrunePlan:
    return PrunePlan(model_id=loaded.resolved.name, revision=loaded.resolved.revision, n_blocks=n, blocks=blocks,
                     granularity=granularity)


def test_smollm2_streamed_store_plans_and_perplexity_equal_resident(smollm2, tiny_store, tmp_path) -> None:
    settings = CaptureSettings(sample_rows=512, store_dtype="float32", batch_size=4)  # as the tiny_store fixture
    streamed = capture_streamed(smollm2.resolved.path, adapter_for(smollm2.model), tiny_store.windows,
                                tmp_path / "s", {"model": "smollm2-135m"}, settings, progress=False)
    assert_same_store(tiny_store, streamed, rel=ARRAY_TOLERANCE)
    assert_same_plans(tiny_store, streamed, 30, (4, 8))
    assert_read_once(streamed)
    held = heldout_windows(smollm2.tokenizer, load_corpus("wikipedia"), 128, max_windows=4)
    plans = [None, _plan(smollm2, 30, (3, 10, 11, 20), "layer"), _plan(smollm2, 30, (3, 10, 11, 20), "attention")]
    assert_same_perplexity(smollm2, held, plans, batch_size=4)


@pytest.mark.slow
def test_gemma3_sliding_window_streamed_equals_resident(gemma3, tmp_path) -> None:
    assert gemma3.model.config.sliding_window < 640
    windows = calibration_windows(gemma3.tokenizer, load_corpus("wikipedia"), 2, 640, seed=0)
    settings = CaptureSettings(sample_rows=512, store_dtype="float32", batch_size=2)
    resident = capture(gemma3.model, adapter_for(gemma3.model), windows, tmp_path / "r", {"model": "gemma3"}, settings,
                       progress=False)
    streamed = capture_streamed(gemma3.resolved.path, None, windows, tmp_path / "s", {"model": "gemma3"}, settings,
                                progress=False)
    assert_same_store(resident, streamed, rel=ARRAY_TOLERANCE)
    assert_same_plans(resident, streamed, 18, (3, 6))
    assert_read_once(streamed)
    held = heldout_windows(gemma3.tokenizer, load_corpus("wikipedia"), 640, max_windows=1)
    assert_same_perplexity(gemma3, held, [None, _plan(gemma3, 18, (2, 7, 12), "attention")], batch_size=1)


@pytest.fixture(scope="module")
def qwen05():
    import copy
    from types import SimpleNamespace

    from blockprune.models.zoo import load_model

    model, tokenizer, resolved = load_model(QWEN)
    return SimpleNamespace(model=model, tokenizer=tokenizer, resolved=resolved, fresh=lambda: copy.deepcopy(model))


@pytest.mark.slow
@pytest.mark.skipif(QWEN not in BUNDLED, reason=f"{QWEN} is bundled by the h2-qwen branch; runs once merged")
def test_qwen2_streamed_equals_resident(qwen05, tmp_path) -> None:
    windows = calibration_windows(qwen05.tokenizer, load_corpus("wikipedia"), 4, 256, seed=0)
    settings = CaptureSettings(sample_rows=512, store_dtype="float32", batch_size=2)
    resident = capture(qwen05.model, adapter_for(qwen05.model), windows, tmp_path / "r", {"model": QWEN}, settings,
                       progress=False)
    streamed = capture_streamed(qwen05.resolved.path, None, windows, tmp_path / "s", {"model": QWEN}, settings,
                                dtype=str(qwen05.model.dtype).removeprefix("torch."), progress=False)
    assert_same_store(resident, streamed, rel=ARRAY_TOLERANCE)
    assert_same_plans(resident, streamed, 24, (4, 6))
    assert_read_once(streamed)
    held = heldout_windows(qwen05.tokenizer, load_corpus("wikipedia"), 256, max_windows=2)
    assert_same_perplexity(qwen05, held, [None, _plan(qwen05, 24, (5, 9), "layer")], batch_size=2)
