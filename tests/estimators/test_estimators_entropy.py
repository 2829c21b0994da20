"""Entropy estimators: closed forms, exact scaling laws and the invariances the docs promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blockprune.estimators import entropy

pytestmark = pytest.mark.unit


def gaussian_entropy(cov: np.ndarray) -> float:
    return 0.5 * float(np.linalg.slogdet(2 * np.pi * np.e * cov)[1])


def mild_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q @ np.diag(np.linspace(0.5, 2.0, d)) @ q.T


@pytest.mark.parametrize("d", [1, 2, 4, 8])
def test_knn_gaussian_within_0_1(d: int, rng: np.random.Generator) -> None:
    cov = mild_cov(rng, d)
    x = rng.multivariate_normal(np.zeros(d), cov, size=2000)
    assert entropy.knn(x) == pytest.approx(gaussian_entropy(cov), abs=0.1)


def test_knn_scaling_is_exact(rng: np.random.Generator) -> None:
    d, a = 5, 3.7
    x = rng.standard_normal((1500, d))
    h = entropy.knn(x)
    assert entropy.knn(a * x) == pytest.approx(h + d * math.log(a), abs=1e-9)
    assert entropy.knn(x + 1e3) == pytest.approx(h, abs=1e-6)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    assert entropy.knn(x @ q) == pytest.approx(h, abs=1e-9)


def test_knn_backends_agree(rng: np.random.Generator) -> None:
    for d in (1, 3, 12):
        x = rng.standard_normal((900, d))
        ref = entropy.knn(x, backend="numpy")
        for kw in ({"backend": "torch"}, {"backend": "tree"}, {"backend": "numpy", "block_size": 13},
                   {"backend": "numpy", "n_threads": 1}, {"backend": "numpy", "n_threads": 2}):
            assert entropy.knn(x, **kw) == pytest.approx(ref, rel=1e-6)


def test_knn_ties_bf16_and_duplicates(rng: np.random.Generator) -> None:
    x = rng.standard_normal((2000, 4)).astype(np.float32)
    ref = entropy.knn(x)
    got = entropy.knn(torch.tensor(x, dtype=torch.bfloat16))
    assert np.isfinite(got) and got == pytest.approx(ref, abs=0.05)
    dup = np.vstack([x[:1000], x[:1000]])
    assert entropy.knn(dup) == pytest.approx(entropy.knn(x[:1000]), abs=1e-9)
    with pytest.raises(ValueError, match="zero k-th neighbour"):
        entropy.knn(np.vstack([x[:500]] * 4), dedup=False, jitter=None)
    coarse = np.round(rng.standard_normal((2000, 2)), 1)  # heavy ties in every coordinate
    assert np.isfinite(entropy.knn(coarse))


def test_bucket_invariances(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3000, 6))
    h = entropy.bucket(x, bins=32)
    assert entropy.bucket(3.7 * x + 11.0, bins=32) == pytest.approx(h, abs=1e-12)
    scales = np.exp(rng.uniform(-2, 2, size=6))
    assert entropy.bucket(x * scales - 5.0, bins=32) == pytest.approx(h, abs=1e-12)
    assert entropy.bucket(x[:, ::-1], bins=32) == pytest.approx(h, abs=1e-12)
    assert 0 < h < 6 * math.log(32)


def test_bucket_is_a_sum_of_marginals(rng: np.random.Generator) -> None:
    x = rng.standard_normal((1000, 3))
    y = x @ rng.standard_normal((3, 3))  # dependent on x: a joint entropy would not add up
    both = entropy.bucket(np.hstack([x, y]), bins=16)
    assert both == pytest.approx(entropy.bucket(x, bins=16) + entropy.bucket(y, bins=16), abs=1e-12)
    const = np.hstack([x, np.full((1000, 1), 2.5)])
    assert entropy.bucket(const, bins=16) == pytest.approx(entropy.bucket(x, bins=16), abs=1e-12)
    uniform = np.repeat(np.arange(16.0), 10)[:, None]  # 16 equally filled bins
    assert entropy.bucket(uniform, bins=16) == pytest.approx(math.log(16), abs=1e-12)
    with pytest.raises(ValueError, match="bins"):
        entropy.bucket(x, bins=1)


def bucket_reference(x: np.ndarray, bins: int, clip: float = 0.0) -> float:
    """Independent per-dimension np.histogram version: range = min..max, or the clip / 1 - clip quantiles
    with values outside moved onto the range ends (an empty clipped range keeps min..max)."""
    total = 0.0
    for col in x.T:
        lo, hi = col.min(), col.max()
        if clip > 0:
            qlo, qhi = np.quantile(col, [clip, 1 - clip])
            if qhi > qlo:
                lo, hi = qlo, qhi
        if hi == lo:
            continue
        counts, _ = np.histogram(np.clip(col, lo, hi), bins=bins, range=(lo, hi))
        prob = counts[counts > 0] / len(col)
        total -= float(np.sum(prob * np.log(prob)))
    return total


@pytest.mark.parametrize("clip", [0.0, 0.005, 0.05])
def test_bucket_matches_histogram_reference(clip: float, rng: np.random.Generator) -> None:
    x = rng.standard_normal((3000, 5)) * np.array([1.0, 10.0, 0.1, 1.0, 3.0])
    x[:4, 0] = 1e3  # massive activations in one dimension
    assert entropy.bucket(x, bins=32, clip=clip) == pytest.approx(bucket_reference(x, 32, clip), abs=1e-12)


def test_bucket_clip_zero_is_min_max() -> None:
    x = np.random.default_rng(3).standard_normal((2000, 4))
    assert entropy.bucket(x, clip=0.0) == entropy.bucket(x)  # the default is the paper's min..max
    assert entropy.bucket(x, clip=0) == entropy.bucket(x)


def test_bucket_clip_invariances_and_outliers(rng: np.random.Generator) -> None:
    x = rng.standard_normal((3000, 6))
    h = entropy.bucket(x, bins=32, clip=0.01)
    assert entropy.bucket(3.7 * x + 11.0, bins=32, clip=0.01) == pytest.approx(h, abs=1e-12)
    scales = np.exp(rng.uniform(-2, 2, size=6))
    assert entropy.bucket(x * scales - 5.0, bins=32, clip=0.01) == pytest.approx(h, abs=1e-12)
    assert entropy.bucket(x[:, ::-1], bins=32, clip=0.01) == pytest.approx(h, abs=1e-12)
    # a few massive values (0.1 % of rows) squeeze min..max bins; the clipped range ignores them
    spiked = x.copy()
    spiked[:3, 0] = 1e4
    assert entropy.bucket(spiked, bins=32) < entropy.bucket(x, bins=32) - 1.0
    assert entropy.bucket(spiked, bins=32, clip=0.005) == pytest.approx(
        entropy.bucket(x, bins=32, clip=0.005), abs=0.01
    )
    # a dimension that is one value except for 0.2 % of rows: clipped range empty, so min..max is kept
    sparse = np.zeros((3000, 1))
    sparse[:6, 0] = 1.0
    assert entropy.bucket(sparse, clip=0.01) == entropy.bucket(sparse) > 0


@pytest.mark.parametrize("bad", [-0.1, 0.5, 0.7, float("nan"), True, "0.1", None])
def test_bucket_clip_rejects_bad_values(bad: object) -> None:
    with pytest.raises(ValueError, match="clip"):
        entropy.bucket(np.zeros((10, 2)) + np.arange(10)[:, None], clip=bad)


def simplex(n: int, scale: float = 1.0) -> np.ndarray:
    """n points with all pairwise distances equal (scale * sqrt(2))."""
    return scale * np.eye(n)


def test_renyi_identical_points_is_zero() -> None:
    x = np.ones((50, 4))
    for alpha in (0.5, 1.0, 2.0, 3.0):
        assert entropy.renyi(x, alpha=alpha) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 3.0])
def test_renyi_equidistant_points_closed_form(alpha: float) -> None:
    # all distances D equal, median bandwidth sigma = D, so K = (1 - c) I + c 11^T with c = exp(-1/2);
    # A = K / n has eigenvalues (1 - c + c n) / n once and (1 - c) / n (n - 1) times.
    n = 20
    c = math.exp(-0.5)
    lam = np.array([(1 - c + c * n) / n] + [(1 - c) / n] * (n - 1))
    want = -float(np.sum(lam * np.log(lam))) if alpha == 1.0 else math.log(np.sum(lam**alpha)) / (1 - alpha)
    for scale in (1.0, 1e-3, 50.0):  # the median heuristic makes it scale free
        assert entropy.renyi(simplex(n, scale), alpha=alpha) == pytest.approx(want, rel=1e-10)
    if alpha == 2.0:  # alpha = 2 by hand: -log(||K||_F^2 / n^2)
        assert want == pytest.approx(-math.log((n + n * (n - 1) * c**2) / n**2), rel=1e-12)


def test_renyi_far_apart_is_log_n() -> None:
    n = 30
    for alpha in (1.0, 2.0, 3.0):
        assert entropy.renyi(simplex(n, 100.0), alpha=alpha, bandwidth=1.0) == pytest.approx(math.log(n))


def test_renyi_invariances_and_subsampling(rng: np.random.Generator) -> None:
    x = rng.standard_normal((400, 5))
    h = entropy.renyi(x)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    assert entropy.renyi(7.0 * x @ q + 3.0) == pytest.approx(h, rel=1e-9)
    assert 0 < h < math.log(400)
    assert entropy.renyi(x, alpha=2.0) == pytest.approx(entropy.renyi(x, alpha=2.0 + 1e-9), rel=1e-6)
    big = rng.standard_normal((3000, 5))
    assert entropy.renyi(big, max_samples=500) == pytest.approx(entropy.renyi(big, max_samples=500), rel=0)
    with pytest.raises(ValueError, match="alpha"):
        entropy.renyi(x, alpha=0)


def test_gaussian_entropy(rng: np.random.Generator) -> None:
    cov = mild_cov(rng, 6)
    x = rng.multivariate_normal(np.zeros(6), cov, size=20_000)
    assert entropy.gaussian(x) == pytest.approx(gaussian_entropy(cov), abs=0.03)
    a = rng.standard_normal((6, 6))
    assert entropy.gaussian(x @ a.T + 2.0) == pytest.approx(
        entropy.gaussian(x) + math.log(abs(np.linalg.det(a))), abs=1e-9
    )
    with pytest.raises(ValueError, match="N > d"):
        entropy.gaussian(x[:5])
    with pytest.raises(ValueError, match="singular"):
        entropy.gaussian(np.hstack([x, x[:, :1]]))
    assert np.isfinite(entropy.gaussian(x[:5], ridge=1e-3))


def test_projection_options_for_entropy(rng: np.random.Generator) -> None:
    x = rng.standard_normal((1500, 40)) * np.linspace(0.1, 3.0, 40)
    assert np.isfinite(entropy.knn(x, proj="pca", p=8))
    assert entropy.gaussian(x, proj="pca", p=8) > entropy.gaussian(x, proj="random", p=8)
