"""Per-window pooling of boundary entropies (EntroDrop's reference mode) on a small synthetic store.

Only the grouping is under test here, so plain Gaussian rows are enough; the estimators themselves are
checked against the released code on a real store in test_entrodrop_reference.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from blockprune import estimators
from blockprune.calibration.scoring import entropy_increase, entropy_one, window_slices
from blockprune.calibration.store import StoreWriter
from blockprune.distributed.scoring import BoundaryView, _entropy_task

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path):
    """3 windows of 40, 40 and 30 rows; boundaries h_0..h_2 with different spreads per window."""
    rng = np.random.default_rng(7)
    sizes = (40, 40, 30)
    positions = np.concatenate([np.stack([np.full(s, w), np.arange(s)], 1) for w, s in enumerate(sizes)])
    names = ["h_000", "h_001", "h_002"]
    writer = StoreWriter(tmp_path / "s", names, len(positions), 8, "float32")
    for i, name in enumerate(names):
        scale = np.repeat([1.0, 2.0 + i, 0.5], sizes)[:, None]
        writer.write_rows(name, 0, (scale * rng.standard_normal((len(positions), 8))).astype(np.float32))
    writer.save_array("positions", positions.astype(np.int64))
    return writer.commit({"n_layers": 2, "capture_mid": False, "stats": {}})


def test_window_estimator_is_the_mean_over_windows(store) -> None:
    assert [(w, s.stop - s.start) for w, s in window_slices(store)] == [(0, 40), (1, 40), (2, 30)]
    spec = estimators.get("entropy.knn_window")
    x = np.asarray(store.array("h_001"))
    per_window = [spec(x[:40], k=5), spec(x[40:80], k=5), spec(x[80:], k=5)]
    assert entropy_one(store, "entropy.knn_window", {"k": 5}, "h_001") == pytest.approx(np.mean(per_window))
    pooled = entropy_one(store, "entropy.knn", {"k": 5}, "h_001")
    assert pooled == pytest.approx(estimators.get("entropy.knn")(x, k=5))  # a pooled spec sees all rows
    dh, h = entropy_increase(store, "entropy.bucket_window", {}, "layer", use_cache=False)
    assert dh == pytest.approx([h["h_001"] - h["h_000"], h["h_002"] - h["h_001"]])


def test_rows_subset_keeps_the_window_grouping(store) -> None:
    rows = np.r_[0:20, 40:60, 80:110]
    spec = estimators.get("entropy.renyi_window")
    x = np.asarray(store.array("h_002"))
    expect = np.mean([spec(x[0:20]), spec(x[40:60]), spec(x[80:110])])
    assert entropy_one(store, "entropy.renyi_window", {}, "h_002", rows=rows) == pytest.approx(expect)
    with pytest.raises(ValueError, match="order"):
        entropy_one(store, "entropy.renyi_window", {}, "h_002", rows=rows[::-1])


def test_too_small_window_names_window_and_boundary(store) -> None:
    with pytest.raises(ValueError, match="more than k=25") as err:
        entropy_one(store, "entropy.knn_window", {}, "h_000", rows=np.r_[0:40, 40:60])
    assert any("window 1 of h_000" in note for note in err.value.__notes__)


def test_ray_task_gets_the_window_ids(store) -> None:
    x = np.asarray(store.array("h_001"))
    got = _entropy_task("entropy.knn_window", {"k": 5}, "h_001", None, 2, False, x, store.positions())
    assert got == entropy_one(store, "entropy.knn_window", {"k": 5}, "h_001")
    with pytest.raises(KeyError, match="positions were not shipped"):
        BoundaryView({"h_001": x}, 2, False).positions()


def test_pooled_estimators_skip_a_kept_bos_row(tmp_path) -> None:
    """A reference-mode store keeps each window's BOS row for the per-window estimators; pooled estimators
    and run scorers must see the other rows only, so keeping it changes nothing for them."""
    from blockprune.calibration.scoring import StoreRunScorer, estimator_rows

    rng = np.random.default_rng(3)
    positions = np.concatenate([np.stack([np.full(30, w), np.arange(30)], 1) for w in range(2)]).astype(np.int64)
    writer = StoreWriter(tmp_path / "b", ["h_000", "h_001"], 60, 4, "float32")
    for name in ("h_000", "h_001"):
        rows = rng.standard_normal((60, 4)).astype(np.float32)
        rows[positions[:, 1] == 0] = 500.0  # a massive-activation BOS row
        writer.write_rows(name, 0, rows)
    writer.save_array("positions", positions)
    store = writer.commit({"n_layers": 1, "capture_mid": False, "stats": {}, "bos_row_kept": True})
    keep = estimator_rows(store, "entropy.bucket")
    assert np.array_equal(keep, np.r_[1:30, 31:60])
    assert estimator_rows(store, "entropy.bucket_window") is None
    x = np.asarray(store.array("h_000"))
    assert entropy_one(store, "entropy.bucket", {}, "h_000", keep) == pytest.approx(
        estimators.get("entropy.bucket")(x[keep]))
    _, h = entropy_increase(store, "entropy.bucket", {}, "layer", use_cache=False)
    assert h["h_000"] == pytest.approx(estimators.get("entropy.bucket")(x[keep]))
    assert np.array_equal(StoreRunScorer(store, "mi.perdim", {}, use_cache=False).rows, keep)
