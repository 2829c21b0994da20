"""Layer-streamed capture and perplexity on tiny random configs of every supported family.

Shape and code-path coverage (sliding-window layers included: the tiny Gemma3/Qwen2 windows are longer
than their sliding window), the spill file, prefetch, bf16, the read-once accounting, the path
decision and the errors raised before any weight is read. Real-weight equality is in
test_streamed_real.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from streamed_helpers import assert_same_store
from tiny_models import FAMILIES, tiny_model

from blockprune.calibration.capture import CaptureSettings, capture
from blockprune.calibration.streamed import (
    capture_streamed,
    choose_capture_path,
    fits_in_memory,
    weight_bytes,
)
from blockprune.calibration.windows import TokenWindows
from blockprune.errors import BadInputError
from blockprune.evaluation.perplexity import chunk_perplexity
from blockprune.evaluation.streamed_perplexity import streamed_chunk_perplexity
from blockprune.models.adapters import UnsupportedArchitectureError, adapter_for
from blockprune.models.apply import PlanMismatchError, apply_plan
from blockprune.models.checkpoint import NotStreamableError
from blockprune.selection.plan import PrunePlan

pytestmark = pytest.mark.unit

SETTINGS = CaptureSettings(sample_rows=50, store_dtype="float32", batch_size=4)


def _windows(n: int = 6, seq: int = 20) -> TokenWindows:
    ids = np.random.default_rng(1).integers(4, 97, (n, seq))
    ids[:, 0] = 1
    return TokenWindows(ids, np.arange(n) * seq, has_bos=True)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, tuple]:
    root = tmp_path_factory.mktemp("tiny-models")
    out = {}
    for family in FAMILIES:
        model = tiny_model(family)
        model.save_pretrained(root / family)
        out[family] = (model, root / family)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_store_and_perplexity_equal_resident(tiny_folders, tmp_path, family: str) -> None:
    model, folder = tiny_folders[family]
    windows = _windows()
    resident = capture(model, adapter_for(model), windows, tmp_path / "r", {"m": family}, SETTINGS, progress=False)
    streamed = capture_streamed(folder, adapter_for(model), windows, tmp_path / "s", {"m": family}, SETTINGS,
                                progress=False)
    # same kernels on the same batch shapes: equal to the bit here; the bar leaves room for another BLAS
    assert_same_store(resident, streamed, rel=1e-6)
    info = streamed.manifest["streamed"]
    assert streamed.manifest["capture_path"] == "streamed"
    assert info["tensors_read_more_than_once"] == 0
    # capture reads everything but the final norm and LM head, each tensor once
    assert 0 < info["weight_bytes_in_checkpoint"] - info["weight_bytes_read"] <= (97 + 1) * 32 * 4
    plans = [None, PrunePlan(model_id="t", n_blocks=6, blocks=(1, 4), granularity="layer"),
             PrunePlan(model_id="t", n_blocks=6, blocks=(0, 2, 5), granularity="attention"),
             PrunePlan(model_id="t", n_blocks=6, blocks=(3,), granularity="mlp")]
    read = []
    for plan in plans:
        pruned = apply_plan(copy.deepcopy(model), plan) if plan else model
        want = chunk_perplexity(pruned, windows, batch_size=4, progress=False)
        report: dict = {}
        got = streamed_chunk_perplexity(folder, windows, plan, batch_size=4, progress=False, report=report)
        assert got.n_tokens == want.n_tokens
        assert abs(got.perplexity / want.perplexity - 1) < 1e-6, (plan, got.perplexity, want.perplexity)
        assert report["tensors_read_more_than_once"] == 0
        read.append(report["weight_bytes_read"])
    # a pruned plan reads only what it keeps
    assert read[0] == weight_bytes(folder, "float32") and all(r < read[0] for r in read[1:])


def test_spill_file_prefetch_and_bf16_give_the_same_store(tiny_folders, tmp_path) -> None:
    model, folder = tiny_folders["gemma3"]
    windows = _windows()
    base = capture_streamed(folder, None, windows, tmp_path / "a", {}, SETTINGS, progress=False)
    spilled = capture_streamed(folder, None, windows, tmp_path / "b", {}, SETTINGS, host_budget=0,
                               spill_dir=tmp_path, prefetch=True, progress=False)
    assert spilled.manifest["streamed"]["hidden_states"] == "spill"
    assert not list(tmp_path.glob("blockprune-hidden-*")), "the spill file must be removed"
    assert_same_store(base, spilled)
    from transformers import AutoModelForCausalLM

    bf16 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()  # rotary tables stay fp32
    res16 = capture(bf16, adapter_for(bf16), windows, tmp_path / "c", {}, SETTINGS, progress=False)
    str16 = capture_streamed(folder, None, windows, tmp_path / "d", {}, SETTINGS, dtype="bfloat16", progress=False)
    assert_same_store(res16, str16, rel=1e-6)


def test_unsupported_architecture_fails_before_reading_weights(tmp_path) -> None:
    from transformers import AutoConfig

    cfg = AutoConfig.for_model("opt", hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32)
    cfg.save_pretrained(tmp_path / "opt")  # no weights at all: the error must come from the config alone
    with pytest.raises(UnsupportedArchitectureError, match="'opt'"):
        capture_streamed(tmp_path / "opt", None, _windows(), tmp_path / "s", {}, SETTINGS, progress=False)
    with pytest.raises(UnsupportedArchitectureError):
        choose_capture_path(tmp_path / "opt", streamed=True)
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob("s.partial-*"))


def test_folder_without_safetensors_or_multimodal_wrapper_is_refused(tiny_folders, tmp_path) -> None:
    model, _ = tiny_folders["llama"]
    folder = tmp_path / "bin"
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # the legacy format
    with pytest.raises(NotStreamableError, match=r"no \.safetensors weights \(only \.bin\)"):
        streamed_chunk_perplexity(folder, _windows(), progress=False)
    from transformers import Gemma3Config

    mm = Gemma3Config(text_config={"hidden_size": 32, "num_hidden_layers": 2, "intermediate_size": 64,
                                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
                                   "vocab_size": 97})
    mm.save_pretrained(tmp_path / "mm")
    with pytest.raises(NotStreamableError, match="multimodal"):
        capture_streamed(tmp_path / "mm", None, _windows(), tmp_path / "s", {}, SETTINGS, progress=False)
    assert issubclass(NotStreamableError, BadInputError)


def test_checkpoint_missing_a_layer_weight_is_refused_before_reading(tiny_folders, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    _, folder = tiny_folders["qwen2"]
    dest = tmp_path / "cut"
    dest.mkdir()
    for f in folder.iterdir():
        if f.suffix == ".json":
            (dest / f.name).write_text(f.read_text())
    weights = load_file(str(folder / "model.safetensors"))
    del weights["model.layers.3.mlp.up_proj.weight"]
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(NotStreamableError, match="model.layers.3.mlp.up_proj.weight"):
        capture_streamed(dest, None, _windows(), tmp_path / "s", {}, SETTINGS, progress=False)


def test_plan_for_another_layer_count_is_refused(tiny_folders) -> None:
    _, folder = tiny_folders["llama"]
    with pytest.raises(PlanMismatchError, match="7 layers"):
        streamed_chunk_perplexity(folder, _windows(), PrunePlan(model_id="t", n_blocks=7, blocks=(1,)),
                                  progress=False)


def test_path_decision_follows_the_budget(tiny_folders, tmp_path, caplog) -> None:
    _, folder = tiny_folders["llama"]
    need = weight_bytes(folder, "float32")
    assert weight_bytes(folder, "bfloat16") * 2 == need
    assert fits_in_memory(folder, "float32", budget_bytes=2 * need)
    assert not fits_in_memory(folder, "float32", budget_bytes=need)
    with caplog.at_level("INFO", logger="blockprune.calibration.streamed"):
        small = choose_capture_path(folder, "float32", budget_bytes=need)
        big = choose_capture_path(folder, "float32", budget_bytes=10 * need)
    assert small.streamed and "do not fit" in small.reason
    assert not big.streamed and "fit" in big.reason
    assert "capture path: streamed" in caplog.text and "capture path: resident" in caplog.text
    assert not choose_capture_path("some-org/some-model", budget_bytes=1).streamed  # a hub id cannot stream
    with pytest.raises(NotStreamableError, match="config.json"):
        choose_capture_path(Path(tmp_path) / "nothing-here", streamed=True)


def test_streamed_parts_through_the_actors_row_writer_merge_to_the_whole(tiny_folders, tmp_path) -> None:
    """What a Ray model actor would run per part (contiguous window ranges, rows written with pwrite)."""
    from blockprune.calibration.capture import finish_manifest
    from blockprune.calibration.streamed import run_capture_streamed
    from blockprune.distributed.capture import RowWriter, SharedStoreWriter, split_windows
    from blockprune.models.layer_stream import LayerStream

    model, folder = tiny_folders["qwen2"]
    windows = _windows(n=10)
    whole = capture(model, adapter_for(model), windows, tmp_path / "r", {}, SETTINGS, progress=False)
    positions = whole.positions()
    names = [f"h_{i:03d}" for i in range(7)] + [f"m_{i:03d}" for i in range(6)]
    shared = SharedStoreWriter(tmp_path / "p", names, len(positions), 32, "float32")
    stats = None
    for part in split_windows(10, SETTINGS.batch_size, 2):
        rows = RowWriter(shared.tmp, "float32")
        with LayerStream(folder) as stream:
            s = run_capture_streamed(stream, windows, positions, SETTINGS, rows, window_subset=part, progress=False)
        rows.close()
        stats = s if stats is None else {g: stats[g].merge(s[g]) for g in s}
    manifest = finish_manifest(shared, {}, windows, positions, SETTINGS, stats, 6, 32, 0.0)
    assert_same_store(whole, shared.commit(manifest), rel=1e-6)
