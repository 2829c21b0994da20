"""Per-window boundary entropies (EntroDrop's reference mode) computed by Ray tasks equal the local ones.

A small synthetic store is enough: the window grouping and its transport to the tasks are under test, not
the model (the estimators are checked against the released code in tests/calibration).
"""

from __future__ import annotations

import numpy as np
import pytest

from blockprune.calibration.scoring import entropy_increase
from blockprune.calibration.store import StoreWriter

pytestmark = pytest.mark.integration


def _store(path):
    rng = np.random.default_rng(11)
    positions = np.concatenate([np.stack([np.full(40, w), np.arange(40)], 1) for w in range(3)]).astype(np.int64)
    names = ["h_000", "h_001", "h_002"]
    writer = StoreWriter(path, names, len(positions), 6, "float32")
    for i, name in enumerate(names):
        rows = (1.0 + i) * rng.standard_normal((len(positions), 6)).astype(np.float32)
        rows[positions[:, 1] == 0] = 300.0  # a kept BOS row
        writer.write_rows(name, 0, rows)
    writer.save_array("positions", positions)
    return writer.commit({"n_layers": 2, "capture_mid": False, "stats": {}, "bos_row_kept": True})


@pytest.mark.parametrize("estimator", ["entropy.knn_window", "entropy.bucket"])
def test_ray_entropy_tasks_equal_local_scores(ray_local, tmp_path, estimator: str) -> None:
    from blockprune.distributed.scoring import RayScoring

    local, _ = entropy_increase(_store(tmp_path / "local"), estimator, {"k": 5} if "knn" in estimator else {},
                                "layer", use_cache=False)
    store = _store(tmp_path / "ray")
    scoring = RayScoring()
    params = {"k": 5} if "knn" in estimator else {}
    remote, _ = scoring.entropy_increase(store, estimator, params, "layer")
    assert scoring.entropy_scorers[-1].computed == 3  # one task per boundary
    again, _ = scoring.entropy_increase(store, estimator, params, "layer")
    assert scoring.entropy_scorers[-1].computed == 0 and again == remote  # cached under the same key
    from blockprune.calibration.scoring import entropy_cache, estimator_rows

    filled = entropy_cache(store, estimator, params, estimator_rows(store, estimator)).values
    assert set(filled) == {"h_000", "h_001", "h_002"}  # the key the local path reads too
    assert remote == pytest.approx(local, rel=1e-12)
    assert entropy_increase(store, estimator, params, "layer")[0] == remote
