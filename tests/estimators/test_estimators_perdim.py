"""mi.perdim (scikit-learn's 1-D KSG per coordinate, averaged) and mi.perdim_gaussian.

The comparison with scikit-learn is deterministic: scikit-learn adds 1e-10 · max(1, mean |x|) Gaussian
noise to each scaled column before the k-NN search. On continuous data no two distances lie within ~1e-9 of
each other, so that noise cannot move a neighbour count; the tests show it by getting the same values from
scikit-learn under two different random states, and then require agreement to 1e-6 nats (in practice 1e-15).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_selection import mutual_info_regression

from blockprune import estimators
from blockprune.errors import BadInputError
from blockprune.estimators import perdim

pytestmark = pytest.mark.unit

SEED = 20250101


def sklearn_columns(x: np.ndarray, y: np.ndarray, k: int = 3, random_state: int = 0) -> np.ndarray:
    """scikit-learn's MI of each coordinate pair, one call per column as the MI-PRUN reading uses it."""
    return np.array([mutual_info_regression(x[:, [j]], y[:, j], n_neighbors=k, random_state=random_state)[0]
                     for j in range(x.shape[1])])


def mixed_pairs(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """8 coordinates: Gaussian pairs from independent to ρ = 0.99, one heavy-tailed, one with a large offset
    and scale (scikit-learn does not centre), one nonlinear."""
    rng = np.random.default_rng(seed)
    rho = np.array([0.0, 0.3, 0.6, 0.9, 0.99, 0.0, 0.0, 0.0])
    x = rng.standard_normal((n, 8))
    y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((n, 8))
    x[:, 5] = rng.standard_t(2, n)
    y[:, 5] = x[:, 5] + 0.5 * rng.standard_t(2, n)
    x[:, 6] = 1e3 + 50.0 * x[:, 6]
    y[:, 6] = x[:, 6] + 30.0 * rng.standard_normal(n)
    y[:, 7] = np.sin(3 * x[:, 7]) + 0.2 * rng.standard_normal(n)
    return x, y


def test_equals_sklearn_per_coordinate_on_random_data() -> None:
    x, y = mixed_pairs(2000)
    ref = sklearn_columns(x, y)
    assert np.array_equal(ref, sklearn_columns(x, y, random_state=12345))  # its noise moves no count here
    got = perdim.perdim_values(x, y)
    assert np.max(np.abs(got - ref)) < 1e-6, (got, ref)
    assert estimators.get("mi.perdim")(x, y) == pytest.approx(ref.mean(), abs=1e-6)
    assert np.all(got >= 0) and got[0] < 0.05 < got[3]  # clipped at 0; independence reads ~0


@pytest.mark.parametrize("k", [1, 5])
def test_equals_sklearn_for_other_k(k: int) -> None:
    x, y = mixed_pairs(1500, seed=SEED + 1)
    np.testing.assert_allclose(perdim.perdim_values(x, y, k=k), sklearn_columns(x, y, k=k), rtol=0, atol=1e-6)


def test_exact_ties_are_broken_like_sklearn() -> None:
    """float16-like data with many exact ties: both break them with 1e-10 noise from different streams, so
    they agree in distribution: here within 0.01 nats per column."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2000, 6)).astype(np.float16)
    y = (0.8 * x.astype(np.float64) + 0.6 * rng.standard_normal((2000, 6))).astype(np.float16)
    got = perdim.perdim_values(x, y)
    ref = sklearn_columns(x.astype(np.float64), y.astype(np.float64))
    assert np.max(np.abs(got - ref)) < 0.01, (got, ref)


def test_gaussian_pairs_match_the_closed_form() -> None:
    """N = 20,000, 8 coordinates with ρ from 0.3 to 0.95: the mean of the per-coordinate estimates is within
    0.02 nats of the mean of -½ log(1 - ρ²). Measured over 20 seeds (tests/estimators/spread_measurements.py):
    one draw of that mean has s.d. 0.0026 and mean error +0.0017, so 0.02 is 7 s.d. beyond the bias; single
    coordinates have s.d. 0.004-0.009 and mean errors up to +0.0036, so each must be within 0.04 (>= 4 s.d.
    beyond the bias)."""
    rng = np.random.default_rng(SEED)
    rho = np.array([0.3, 0.6, 0.8, 0.9, 0.95, 0.3, 0.6, 0.8])
    x = rng.standard_normal((20000, 8))
    y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((20000, 8))
    truth = -0.5 * np.log1p(-rho**2)
    got = perdim.perdim_values(x, y)
    assert abs(got.mean() - truth.mean()) < 0.02, (got, truth)
    assert np.max(np.abs(got - truth)) < 0.04, (got, truth)
    assert estimators.get("mi.perdim_gaussian")(x, y) == pytest.approx(truth.mean(), abs=0.01)


def test_invariances_and_thread_count() -> None:
    x, y = mixed_pairs(1000)
    ref = perdim.perdim_values(x, y)
    rng = np.random.default_rng(3)
    scale = np.exp(rng.uniform(-2, 2, 8))
    np.testing.assert_allclose(perdim.perdim_values(x * scale + 7.0, y * scale - 3.0), ref, atol=1e-9)
    np.testing.assert_allclose(perdim.perdim_values(y, x), ref, atol=1e-12)  # symmetric
    cols = rng.permutation(8)
    np.testing.assert_allclose(perdim.perdim_values(x[:, cols], y[:, cols]), ref[cols], atol=1e-9)
    assert np.array_equal(perdim.perdim_values(x, y, n_threads=1), perdim.perdim_values(x, y, n_threads=3))


def test_gaussian_proxy_is_the_per_column_correlation() -> None:
    x, y = mixed_pairs(3000)
    r = np.array([np.corrcoef(x[:, j], y[:, j])[0, 1] for j in range(8)])
    assert perdim.perdim_gaussian(x, y) == pytest.approx(np.mean(-0.5 * np.log1p(-r**2)), rel=1e-10)
    const = np.ones((50, 2))
    assert perdim.perdim_gaussian(const, np.random.default_rng(0).standard_normal((50, 2))) == 0.0
    assert perdim.perdim_gaussian(x, x) == float("inf")


def test_bad_input() -> None:
    x, y = mixed_pairs(200)
    with pytest.raises(ValueError, match="same width"):
        perdim.perdim(x, y[:, :4])
    with pytest.raises(ValueError, match="more than k=3"):
        perdim.perdim(x[:3], y[:3])
    with pytest.raises(ValueError, match="noise"):
        perdim.perdim(x, y, noise=-1.0)
    with pytest.raises(ValueError, match="two arrays"):
        perdim.perdim(x)
    spec = estimators.get("mi.perdim")
    with pytest.raises(BadInputError, match="does not take 'bogus'"):
        spec.check_params({"bogus": 5})
