"""The vectorised k-th neighbour radius in the max-norm (blockprune/estimators/_chebyshev2d.py) equals a k-d
tree's bit for bit: on continuous data, on data full of exact ties, on heavy tails, on tiny sets, and with
strips and windows so small that most points need the exact range query."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from blockprune.estimators._chebyshev2d import kth_chebyshev

pytestmark = pytest.mark.unit


def tree_radius(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    out = np.empty(x.shape)
    for i in range(x.shape[0]):
        pts = np.c_[x[i], y[i]]
        out[i] = cKDTree(pts).query(pts, k=[k + 1], p=np.inf)[0][:, 0]
    return out


def correlated(rng: np.random.Generator, c: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rho = rng.uniform(-0.99, 0.99, (c, 1))
    x = rng.standard_normal((c, n))
    return x, rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((c, n))


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("n", [2000, 1000 + 37])
def test_equals_a_kd_tree_on_continuous_data(k: int, n: int) -> None:
    x, y = correlated(np.random.default_rng(n + k), 6, n)
    x[0] = np.random.default_rng(1).standard_cauchy(n)  # heavy tails: wide squares in sparse regions
    assert np.array_equal(kth_chebyshev(x, y, k), tree_radius(x, y, k))


@pytest.mark.parametrize(("strip", "window"), [(4, 1), (8, 2), (16, 3), (128, 12)])
def test_exact_when_most_points_need_the_range_query(strip: int, window: int) -> None:
    x, y = correlated(np.random.default_rng(strip), 4, 1500)
    assert np.array_equal(kth_chebyshev(x, y, 3, strip, window), tree_radius(x, y, 3))


def test_exact_ties_and_duplicates() -> None:
    """Values on a coarse grid: many equal distances and repeated points (radius 0 included)."""
    rng = np.random.default_rng(7)
    x = np.round(rng.standard_normal((5, 3000)) * 4) / 4
    y = np.round((0.7 * x + 0.7 * rng.standard_normal((5, 3000))) * 4) / 4
    x[1] = 1.0  # one coordinate constant
    for k in (1, 3, 8):
        got = kth_chebyshev(x, y, k)
        assert np.array_equal(got, tree_radius(x, y, k)), k
    assert (kth_chebyshev(x, y, 3) == 0).any()


@pytest.mark.parametrize("n", [4, 5, 9, 33, 130])
def test_tiny_sets(n: int) -> None:
    x, y = correlated(np.random.default_rng(n), 3, n)
    for k in range(1, min(n, 6)):
        assert np.array_equal(kth_chebyshev(x, y, k), tree_radius(x, y, k)), (n, k)


def test_large_offsets_and_scales() -> None:
    rng = np.random.default_rng(11)
    x = 1e6 + 1e-3 * rng.standard_normal((3, 2500))
    y = -5e4 + 20.0 * rng.standard_normal((3, 2500))
    assert np.array_equal(kth_chebyshev(x, y, 3), tree_radius(x, y, 3))
