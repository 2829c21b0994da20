"""Comparison of two ActivationStores, shared by the layer-streamed capture tests."""

from __future__ import annotations

import numpy as np

STAT_TOLERANCE = 1e-5  # absolute, on the mean BI / angular distance / relative magnitude of every block


def assert_same_store(a, b, rel: float = 0.0) -> None:
    """Same sampled rows at every boundary (|Δ| ≤ rel · max|h| of that boundary) and the same statistics."""
    assert np.array_equal(a.positions(), b.positions())
    assert np.array_equal(a.token_ids(), b.token_ids())
    assert a.n_layers == b.n_layers and a.has_mid == b.has_mid
    names = [f"h_{i:03d}" for i in range(a.n_layers + 1)]
    names += [f"m_{i:03d}" for i in range(a.n_layers)] if a.has_mid else []
    worst = 0.0
    for name in names:
        x, y = np.asarray(a.array(name), np.float64), np.asarray(b.array(name), np.float64)
        assert x.shape == y.shape, name
        assert np.abs(x - y).max() <= rel * np.abs(x).max(), name
        worst = max(worst, float(np.abs(x - y).max() / np.abs(x).max()))
    print(f"largest |Δ| / max|h| over {len(names)} boundaries: {worst:.2e}")
    for g in ("layer", "attention", "mlp"):
        assert a.stats[g]["counts"] == b.stats[g]["counts"]
        for k in ("bi", "angular", "relmag"):
            np.testing.assert_allclose(b.stats[g][k], a.stats[g][k], rtol=0, atol=STAT_TOLERANCE, err_msg=f"{g} {k}")
