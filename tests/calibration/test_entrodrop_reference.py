"""blockprune's EntroDrop reference mode against a literal re-implementation of the released code.

``entrodrop_reference`` (this folder) recomputes, per calibration window and in torch, what
LlamaEntroDrop.py computes; both read the same real smollm2 store of whole windows. The reproduction must
rank the blocks the same way (Spearman ρ ≥ 0.98 over all 30 blocks) and, with the fixed protection of
blocks 0, 1 and L-1, drop the same blocks for n = 2, 4, 6, 8, for each estimator and at layer and
attention granularity.
"""

from __future__ import annotations

import numpy as np
import pytest
from entrodrop_reference import block_scores, plan
from scipy.stats import spearmanr

from blockprune.calibration.scoring import entropy_increase, window_slices
from blockprune.selection import select

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_window_store_holds_whole_windows_with_position_0(window_store) -> None:
    pos = window_store.positions()
    slices = window_slices(window_store)
    assert len(slices) == 16 and all(s.stop - s.start == 256 for _, s in slices)
    assert np.array_equal(pos[:256, 1], np.arange(256))  # position 0 (the BOS row) kept
    assert window_store.manifest["settings"]["sampling"] == "windows"


@pytest.mark.parametrize("granularity", ["layer", "attention"])
@pytest.mark.parametrize("estimator", ["knn", "bucket", "renyi"])
def test_reference_mode_matches_the_released_code(window_store, estimator: str, granularity: str) -> None:
    n = window_store.n_layers
    # cached in the store: the attention scores reuse the layer run's entropies of h_0..h_L
    ours, _ = entropy_increase(window_store, f"entropy.{estimator}_window", {}, granularity)
    ref = block_scores(window_store.path, n, estimator, granularity)
    rho = spearmanr(ours, ref).statistic
    print(f"{estimator} {granularity}: Spearman rho vs the released code = {rho:.5f}, "
          f"max |ΔH difference| = {np.max(np.abs(np.subtract(ours, ref))):.3g}")
    assert rho >= 0.98
    for k in (2, 4, 6, 8):
        assert select("entrodrop", n, k, block_scores=ours).blocks == plan(ref, k), k
