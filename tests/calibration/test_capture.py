"""Activation capture on the real smollm2-135m, checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from blockprune.calibration.capture import (
    CaptureSettings,
    NonFiniteActivationError,
    capture,
    sample_positions,
)
from blockprune.calibration.store import ActivationStore, StoreCorruptError
from blockprune.models.adapters import adapter_for

pytestmark = pytest.mark.integration


def _manual_hidden_states(model, input_ids: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run the decoder layers one by one by hand (no hooks): boundaries h_0..h_L and mid streams."""
    inner = model.model
    with torch.no_grad():
        h = inner.embed_tokens(input_ids)
        pos = torch.arange(input_ids.shape[1]).unsqueeze(0)
        pe = inner.rotary_emb(h, pos)
        hs, mids = [h.double().numpy()], []
        for layer in inner.layers:
            a, _ = layer.self_attn(layer.input_layernorm(h), position_embeddings=pe, attention_mask=None,
                                   position_ids=pos)
            mid = h + a
            h = mid + layer.mlp(layer.post_attention_layernorm(mid))
            mids.append(mid.double().numpy())
            hs.append(h.double().numpy())
    return hs, mids


def _mean_cos(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    return float(np.mean(np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))))


def test_block_influence_matches_layer_by_layer_computation(smollm2, tiny_store) -> None:
    ids = torch.from_numpy(tiny_store.windows.input_ids)
    hs, mids = _manual_hidden_states(smollm2.model, ids)
    hs = [h[:, 1:] for h in hs]  # BOS is not calibration data
    mids = [m[:, 1:] for m in mids]
    bi_manual = [1 - _mean_cos(hs[i], hs[i + 1]) for i in range(len(hs) - 1)]
    bi_store = tiny_store.stats["layer"]["bi"]
    np.testing.assert_allclose(bi_store, bi_manual, atol=1e-4, rtol=0)
    attn_manual = [1 - _mean_cos(hs[i], mids[i]) for i in range(len(mids))]
    mlp_manual = [1 - _mean_cos(mids[i], hs[i + 1]) for i in range(len(mids))]
    np.testing.assert_allclose(tiny_store.stats["attention"]["bi"], attn_manual, atol=1e-4, rtol=0)
    np.testing.assert_allclose(tiny_store.stats["mlp"]["bi"], mlp_manual, atol=1e-4, rtol=0)
    # the sampled rows are the same tokens at every boundary (a paired sample)
    pos = tiny_store.positions()
    full = [h for h in _manual_hidden_states(smollm2.model, ids)[0]]
    for i in (0, 7, tiny_store.n_layers):
        expect = full[i][pos[:, 0], pos[:, 1]]
        np.testing.assert_allclose(tiny_store.h(i), expect, rtol=1e-4, atol=1e-4 * np.abs(expect).max())
    assert np.all(pos[:, 1] >= 1), "BOS rows must not be sampled"


def test_store_manifest_and_checksums(tiny_store) -> None:
    m = tiny_store.manifest
    assert m["n_layers"] == 30 and m["hidden_size"] == 576 and m["n_rows"] == 512
    assert tiny_store.h(0).shape == (512, 576) and tiny_store.mid(29).shape == (512, 576)
    reopened = ActivationStore.open(tiny_store.path, verify=True)
    assert reopened.checksum == tiny_store.checksum
    assert len(tiny_store.token_ids()) == 512
    with pytest.raises(IndexError):
        tiny_store.h(31)


def test_corrupted_store_is_detected(tiny_store, tmp_path) -> None:
    import shutil

    copy_path = tmp_path / "copy"
    shutil.copytree(tiny_store.path, copy_path)
    arr = np.load(copy_path / "h_003.npy")
    arr[0, 0] += 1
    np.save(copy_path / "h_003.npy", arr)
    with pytest.raises(StoreCorruptError, match="h_003"):
        ActivationStore.open(copy_path, verify=True)


def test_nan_activation_names_the_layer(smollm2, tiny_store, tmp_path) -> None:
    model = smollm2.fresh()
    layer = model.model.layers[5]
    layer.register_forward_hook(lambda mod, args, out: out * float("nan"))
    with pytest.raises(NonFiniteActivationError, match="layer 5"):
        capture(model, adapter_for(model), tiny_store.windows, tmp_path / "s", {}, CaptureSettings(sample_rows=64),
                progress=False)
    assert not (tmp_path / "s").exists(), "a failed capture must not leave a store behind"
    assert not list(tmp_path.glob("s.partial-*"))


def test_sample_positions_are_seeded_sorted_and_skip_bos() -> None:
    a = sample_positions(10, 64, 100, seed=3, skip_first=True)
    b = sample_positions(10, 64, 100, seed=3, skip_first=True)
    c = sample_positions(10, 64, 100, seed=4, skip_first=True)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    flat = a[:, 0] * 64 + a[:, 1]
    assert np.all(np.diff(flat) > 0) and a[:, 1].min() >= 1
    every = sample_positions(2, 8, 1000, seed=0, skip_first=False)
    assert len(every) == 16


def test_whole_window_sampling_keeps_every_position_of_seeded_windows() -> None:
    pos = sample_positions(10, 64, 200, seed=3, skip_first=False, whole_windows=True)
    wins = np.unique(pos[:, 0])
    assert len(wins) == 3 and len(pos) == 3 * 64  # 200 // 64 whole windows, no partial one
    for w in wins:
        assert np.array_equal(pos[pos[:, 0] == w, 1], np.arange(64))  # position 0 included
    assert not np.array_equal(wins, np.unique(sample_positions(10, 64, 200, 4, False, True)[:, 0]))
    flat = pos[:, 0] * 64 + pos[:, 1]
    assert np.all(np.diff(flat) > 0)
    bos_skipped = sample_positions(10, 64, 200, seed=3, skip_first=True, whole_windows=True)
    assert bos_skipped[:, 1].min() == 1 and len(bos_skipped) == 3 * 63
    assert len(sample_positions(4, 64, 10**6, 0, False, True)) == 4 * 64  # all windows when they fit
    with pytest.raises(ValueError, match="no whole window"):
        sample_positions(10, 64, 50, 0, False, True)


def test_new_capture_settings_enter_the_store_key_only_when_not_default() -> None:
    from blockprune.calibration.capture import store_key
    from blockprune.calibration.settings import for_window_pooling

    meta = {"model": "m", "corpus": "c"}
    default = CaptureSettings()
    # the key of a default store is what it was before `sampling` existed (the same payload)
    import hashlib
    import json
    from dataclasses import asdict

    legacy = {k: v for k, v in asdict(default).items() if k != "sampling"}
    old_key = hashlib.sha256(json.dumps({"meta": meta, "settings": legacy}, sort_keys=True,
                                        default=str).encode()).hexdigest()[:20]
    assert store_key(meta, default) == old_key
    windows = for_window_pooling(default)
    assert windows.sampling == "windows" and windows.include_bos
    assert store_key(meta, windows) != store_key(meta, CaptureSettings(include_bos=True))


def test_capture_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError):
        CaptureSettings(store_dtype="int8")
    with pytest.raises(ValueError):
        CaptureSettings(sample_rows=1)
    with pytest.raises(ValueError, match="sampling"):
        CaptureSettings(sampling="rows")


@pytest.mark.parametrize("value", [7e4, -7e4])
def test_float16_store_refuses_values_out_of_range(tmp_path, value: float) -> None:
    from blockprune.calibration.store import StoreWriter

    writer = StoreWriter(tmp_path / "s", ["h_000"], 2, 3, "float16")
    writer.write_rows("h_000", 0, np.array([[6e4, 0, 1]], np.float32))  # inside the range: fine
    with pytest.raises(OverflowError, match="float32"):
        writer.write_rows("h_000", 1, np.array([[0, value, 0]], np.float32))
    writer.abort()
