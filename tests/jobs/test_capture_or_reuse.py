"""The single-process capture: under the store lock, reuses a finished store and clears crashed partials."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from blockprune.calibration.capture import CaptureSettings
from blockprune.calibration.store import store_lock
from blockprune.pipeline.config import CalibrationSettings, EvalSettings, JobConfig, TrialSpec


def _job(root: Path) -> JobConfig:
    return JobConfig(model="smollm2-135m", calibration=CalibrationSettings("lee-news", 2, 32, 0),
                     trials=(TrialSpec("shortgpt", 2),),
                     capture=CaptureSettings(sample_rows=64, store_dtype="float32", batch_size=2),
                     evaluation=EvalSettings(windows=1, batch_size=1), store_root=str(root))


@pytest.mark.integration
def test_crashed_partial_is_removed_and_the_store_reused(smollm2: Any, tmp_path: Path) -> None:
    from blockprune.pipeline.prepare import capture_or_reuse, prepare, store_path

    p = prepare(_job(tmp_path))
    path = store_path(p)
    stale = path.with_name(path.name + ".partial-999999")
    (stale / "h_000.npy").parent.mkdir(parents=True)
    (stale / "h_000.npy").write_bytes(b"half-written")
    store, reused = capture_or_reuse(p, smollm2.model, progress=False)
    assert not reused and not stale.exists()
    assert (path / "manifest.json").exists() and store.n_rows == 2 * 31  # every token but each BOS
    again, reused = capture_or_reuse(p, None, progress=False)  # no model needed: nothing is captured
    assert reused and again.checksum == store.checksum
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted([path.name, path.name + ".lock"])


@pytest.mark.integration
def test_a_second_job_waits_for_the_first_capture_then_reuses_it(smollm2: Any, tmp_path: Path) -> None:
    """While another process holds the store lock, capture_or_reuse waits instead of capturing beside it."""
    from blockprune.calibration.capture import capture
    from blockprune.pipeline.prepare import capture_or_reuse, prepare, store_meta, store_path

    p = prepare(_job(tmp_path))
    path = store_path(p)
    results: list[Any] = []
    with store_lock(path):
        t = threading.Thread(target=lambda: results.append(capture_or_reuse(p, None, progress=False)))
        t.start()
        t.join(timeout=1.0)
        assert t.is_alive() and not results  # blocked on the lock
        capture(smollm2.model, p.adapter, p.windows, path, store_meta(p), p.job.capture, progress=False)
    t.join(timeout=60)
    assert results and results[0][1] is True  # reused what the lock holder wrote


def _overwrite_middle(f: Path, n: int = 64 * 1024) -> None:
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(n)
    f.write_bytes(bytes(data))


@pytest.mark.integration
def test_a_corrupted_store_is_captured_again_and_its_cached_scores_never_reused(smollm2: Any, tmp_path: Path) -> None:
    """The issue's case 1 on the real pipeline: 64 KiB overwritten in one boundary of a finished store.

    Before: the store was reused, its entropy changed, and the wrong score was cached under the clean id."""
    import dataclasses

    from blockprune.pipeline.prepare import capture_or_reuse, prepare, store_path
    from blockprune.pipeline.scoring import score_and_select

    trial = TrialSpec("entrodrop", 3)
    p = prepare(dataclasses.replace(_job(tmp_path), trials=(trial,)))
    clean, _ = capture_or_reuse(p, smollm2.model, progress=False)
    clean_h = score_and_select(clean, trial).info["entropy"]
    assert list((clean.path / "scores").glob("*.json")), "the entropies are cached beside the store"
    _overwrite_middle(clean.path / "h_005.npy")

    store, reused = capture_or_reuse(p, smollm2.model, progress=False)
    assert not reused, "a store that fails its checksums must be captured again"
    assert "h_005.npy" in store.notes["store_replaced_corrupt"]
    aside = store_path(p).with_name(store_path(p).name + ".corrupt")
    assert list((aside / "scores").glob("*.json")) and not (store.path / "scores").exists()
    again = score_and_select(store, trial)
    assert again.info["entropy"] == clean_h  # recomputed on the recaptured (bit-identical) arrays
    assert store.checksum == clean.checksum

    # the study's path: it passes no model when it expects reuse, and a loader for when it cannot
    _overwrite_middle(store.path / "m_010.npy")
    loads: list[int] = []

    def load() -> Any:
        loads.append(1)
        return smollm2.model

    third, reused = capture_or_reuse(p, None, progress=False, load=load)
    assert not reused and loads == [1] and "m_010.npy" in third.notes["store_replaced_corrupt"]
    assert capture_or_reuse(p, None, progress=False, load=load)[1] and loads == [1]  # intact now: reused


@pytest.mark.integration
@pytest.mark.slow  # gemma3-270m: ~40 s on 2 cores
def test_float16_overflow_of_gemma3_is_captured_again_in_float32_and_reused(gemma3: Any, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The README's second example failed with OverflowError at h_010: LAMBADA drives gemma3-270m's residual
    stream past 65504. The default store dtype stays float16 (it keys every store and study fingerprint)."""
    import logging

    import numpy as np

    from blockprune.pipeline.prepare import capture_or_reuse, prepare, store_path

    job = JobConfig(model="gemma3-270m", calibration=CalibrationSettings("lambada", 4, 256, 0),
                    trials=(TrialSpec("entrodrop", 3, estimator="entropy.knn"),),
                    capture=CaptureSettings(sample_rows=2048, batch_size=2),  # every token, the default dtype
                    evaluation=EvalSettings(windows=1, batch_size=1), store_root=str(tmp_path))
    assert job.capture.store_dtype == "float16"
    p = prepare(job)
    with caplog.at_level(logging.WARNING, logger="blockprune.calibration.store"):
        store, reused = capture_or_reuse(p, gemma3.model, progress=False)
    assert not reused and store.path == store_path(p)
    assert store.manifest["settings"]["store_dtype"] == "float32" and store.h(10).dtype == np.float32
    assert np.abs(store.h(10)).max() > np.finfo(np.float16).max  # the values float16 could not hold
    assert "h_010" in store.notes["store_dtype_fallback"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "float16 range" in warning and "float32" in warning
    assert not list(tmp_path.glob("*.partial-*"))
    again, reused = capture_or_reuse(p, None, progress=False)  # the rerun reuses the float32 store
    assert reused and again.checksum == store.checksum
