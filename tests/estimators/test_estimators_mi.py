"""Accuracy and invariances of the mutual-information estimators (seeded; each can fail)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from estimator_samples import noisy_pair, true_mi

from blockprune import estimators
from blockprune.estimators import mi

pytestmark = pytest.mark.unit

N = 2000
SEED = 20250101  # the one seed of every single-draw acceptance case (the constant of conftest's rng)
STAT_SEEDS = [SEED + i for i in range(20)]  # the multi-draw checks; SEED itself is the first


def draw(d: int, sigma: float | None, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """One N = 2000 sample: Y = X + sigma * eps, or independent X, Y when sigma is None."""
    rng = np.random.default_rng(seed)
    if sigma is None:
        return rng.standard_normal((N, d)), rng.standard_normal((N, d))
    return noisy_pair(rng, N, d, sigma)


def rho(sigma: float) -> float:
    return 1.0 / math.sqrt(1.0 + sigma**2)


# ---------------------------------------------------------------- acceptance (issue #3): one seeded draw each
# Measured over 200 seeds (SEED + i), one N = 2000 KSG draw has a s.d. of 0.017-0.026 nats, so the 0.03 bar
# is 1.2-1.8 s.d. and is missed 7-27 % of the time whatever the implementation. SEED is the repository's
# constant, not a searched one; where its draw misses the stated bar the case is a strict xfail that says by
# how much (the multi-draw checks further down show the estimator itself is fine there).
SEED_MISSES = {  # d = 1: this draw has corr(x, eps) = +0.033 (1.5 s.d.) and var(eps) = 0.956, so its sample
    # correlation exceeds rho (0.903 vs 0.894 at sigma = 0.5): every estimator, plug-in included, reads high
    ("ksg", 1, 0.5): "KSG 0.851 vs truth 0.805 (+0.046); 200-seed mean 0.812, s.d. 0.026",
    ("ksg", 1, 1.0): "KSG 0.382 vs truth 0.347 (+0.035); 200-seed mean 0.350, s.d. 0.025",
    ("ksg", 8, None): "KSG 0.038 for independent X, Y at d = 8: 2.0 s.d. of one draw (s.d. 0.019)",
    ("gaussian", 1, 0.5): "plug-in 0.844 vs truth 0.805 (+4.9 %); one draw's s.d. is rho/sqrt(N) = 2.5 %",
    ("gaussian", 1, 1.0): "plug-in 0.380 vs truth 0.347 (+9.6 %); one draw's s.d. is 4.6 % of the truth",
    ("gaussian", 1, 2.0): "plug-in 0.132 vs truth 0.112 (+18 %); one draw's s.d. is 9.0 % of the truth",
}


def _case(kind: str, d: int, sigma: float | None) -> Any:
    reason = SEED_MISSES.get((kind, d, sigma))
    marks = [pytest.mark.xfail(strict=True, reason=f"seed {SEED}: {reason}")] if reason else []
    return pytest.param(d, sigma, marks=marks, id=f"d{d}-sigma{sigma}")


@pytest.mark.parametrize(("d", "sigma"), [_case("ksg", 1, s) for s in (0.5, 1.0, 2.0)])
def test_ksg_d1_single_draw_within_0_03(d: int, sigma: float) -> None:
    # defaults: p=16 >= d=1 so nothing is projected; robust z-scoring is harmless in 1-D
    x, y = draw(d, sigma)
    assert mi.ksg(x, y) == pytest.approx(true_mi(d, sigma), abs=0.03)


@pytest.mark.parametrize(("d", "sigma"), [_case("gaussian", d, s) for d in (1, 8) for s in (0.5, 1.0, 2.0)])
def test_gaussian_baseline_single_draw_within_2_percent(d: int, sigma: float) -> None:
    x, y = draw(d, sigma)
    assert mi.gaussian(x, y) == pytest.approx(true_mi(d, sigma), rel=0.02)


@pytest.mark.parametrize(("d", "sigma"), [_case("ksg", d, None) for d in (1, 8, 64)])
def test_independent_single_draw_below_0_03(d: int, sigma: None) -> None:
    x, y = draw(d, sigma)
    assert abs(mi.ksg(x, y)) < 0.03


# ---------------------------------------------------------------- the same cases over 20 fixed seeds
# Bars from the 200-seed measurement, not from these 20 draws: one draw's s.d. is at most 0.026, so a
# 20-draw mean has a standard error of at most 0.006 and must lie within 0.02 (3.4 s.e.) of the truth; the
# draws' s.d. must stay below 0.04; and since 73-93 % of single draws meet the 0.03 bar, at least half of
# 20 must (about 2.5 binomial s.d. below the worst case).
@pytest.mark.parametrize(("d", "sigma"), [(1, 0.5), (1, 1.0), (1, 2.0), (1, None), (8, None), (64, None)])
def test_ksg_over_20_seeds(d: int, sigma: float | None) -> None:
    truth = 0.0 if sigma is None else true_mi(d, sigma)
    est = np.array([mi.ksg(*draw(d, sigma, seed)) for seed in STAT_SEEDS])
    err = est - truth
    assert abs(err.mean()) < 0.02, est
    assert est.std(ddof=1) < 0.04, est
    assert np.mean(np.abs(err) < 0.03) >= 0.5, est


@pytest.mark.parametrize("d", [1, 8])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_baseline_over_20_seeds(d: int, sigma: float) -> None:
    # delta method: one draw's s.d. is sqrt(d) rho / sqrt(N), i.e. 2.5-9 % of the truth at d = 1, so a 2 %
    # bar on one N = 2000 draw is a statement about luck there. The mean must sit within 3 standard errors
    # of the truth plus the plug-in bias, and the spread must match the delta method.
    sd = math.sqrt(d) * rho(sigma) / math.sqrt(N)
    bias = 0.5 * (2 * mi.wishart_logdet_bias(d, N - 1) - mi.wishart_logdet_bias(2 * d, N - 1))
    est = np.array([mi.gaussian(*draw(d, sigma, seed)) for seed in STAT_SEEDS])
    assert abs(est.mean() - true_mi(d, sigma) - bias) < 3 * sd / math.sqrt(len(est)), est
    assert 0.6 * sd < est.std(ddof=1) < 1.5 * sd, est


def test_gaussian_bias_correction_is_unbiased() -> None:
    # 200 draws at d = 8: the plug-in mean sits d^2 / (2N) = 0.016 nats (4.6 s.e.) above the truth, the
    # corrected one within 3 s.e. of it
    d, sigma = 8, 1.0
    plug, corr = [], []
    for i in range(200):
        x, y = draw(d, sigma, SEED + i)
        plug.append(mi.gaussian(x, y))
        corr.append(mi.gaussian(x, y, bias_correct=True))
    se = math.sqrt(d) * rho(sigma) / math.sqrt(N) / math.sqrt(200)
    assert np.mean(plug) - true_mi(d, sigma) > 2 * se
    assert abs(np.mean(corr) - true_mi(d, sigma)) < 3 * se
    assert np.std(corr) == pytest.approx(np.std(plug), rel=1e-6)  # a constant shift: no less noise


@pytest.mark.parametrize("kw", [{"variant": 2}, {"norm": "chebyshev"}, {"variant": 2, "backend": "numpy"}])
def test_ksg_d1_other_forms(kw: dict, rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, N, 1, 1.0)
    assert mi.ksg(x, y, **kw) == pytest.approx(true_mi(1, 1.0), abs=0.05)


def test_gaussian_baseline_affine_invariant_and_guarded(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, 500, 4, 1.0)
    a = rng.standard_normal((4, 4))
    assert mi.gaussian(x @ a + 5.0, y) == pytest.approx(mi.gaussian(x, y), rel=1e-9)
    with pytest.raises(ValueError, match="N > d_x"):
        mi.gaussian(x[:8], y[:8])
    assert mi.gaussian(x, x) == float("inf")


@pytest.mark.parametrize("d", [1, 8, 64])
def test_strictly_decreasing_in_noise(d: int, rng: np.random.Generator) -> None:
    x = rng.standard_normal((N, d))
    eps = rng.standard_normal((N, d))
    values = [mi.ksg(x, x + s * eps) for s in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values


def test_symmetric(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, N, 24, 1.0)
    assert mi.ksg(x, y) == pytest.approx(mi.ksg(y, x), rel=1e-9)
    assert mi.ksg(x, y, proj="none") == pytest.approx(mi.ksg(y, x, proj="none"), rel=1e-9)


def test_invariant_to_transforms_of_both(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, N, 24, 1.0)
    ref = mi.ksg(x, y)
    rows = rng.permutation(N)
    cols = rng.permutation(24)
    signs = rng.choice([-1.0, 1.0], size=24)
    scales = np.exp(rng.uniform(-3, 3, size=24))
    assert mi.ksg(x[rows], y[rows]) == pytest.approx(ref, rel=1e-9)
    assert mi.ksg(x[:, cols], y[:, cols]) == pytest.approx(ref, rel=1e-9)
    assert mi.ksg(x * signs, y * signs) == pytest.approx(ref, rel=1e-9)
    assert mi.ksg(x * scales, y * scales) == pytest.approx(ref, rel=1e-9)


def test_proj_none_invariant_to_transforms_of_one_side(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, N, 6, 1.0)
    ref = mi.ksg(x, y, proj="none")
    cols = rng.permutation(6)
    signs = rng.choice([-1.0, 1.0], size=6)
    scales = np.exp(rng.uniform(-3, 3, size=6))
    for tx in (x[:, cols], x * signs, x * scales, x + 1e3):
        assert mi.ksg(tx, y, proj="none") == pytest.approx(ref, rel=1e-9)


def test_shuffled_pairing_is_near_zero(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, N, 8, 0.5)
    assert mi.ksg(x, y) > 2.0
    assert abs(mi.ksg(x, y[rng.permutation(N)])) < 0.06  # ~3 s.d. of one N = 2000 draw at d = 8


def test_markov_chain_data_processing(rng: np.random.Generator) -> None:
    d = 32
    x = rng.standard_normal((N, d))
    y = x + 0.7 * rng.standard_normal((N, d))
    z = y + 0.7 * rng.standard_normal((N, d))
    ixy, iyz, ixz = mi.ksg(x, y), mi.ksg(y, z), mi.ksg(x, z)
    assert ixz < min(ixy, iyz), (ixy, iyz, ixz)


def test_default_does_not_collapse_when_one_side_dominates(rng: np.random.Generator) -> None:
    # residual norms grow layer to layer; the raw joint max-norm then ignores x and reports ~0
    x, y = noisy_pair(rng, N, 16, 1.0)
    assert abs(mi.ksg(x, 1e3 * y, standardize=False, proj="none")) < 1e-6
    assert mi.ksg(x, 1e3 * y) == pytest.approx(mi.ksg(x, y), rel=1e-9)
    assert mi.ksg(x, y) > 1.0


def test_reference_tree_matches_blocked_chebyshev(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, 700, 3, 1.0)
    raw = {"standardize": False, "jitter": None, "dedup": False, "proj": "none", "norm": "chebyshev"}
    ref = estimators.reference.ksg_tree(x, y, k=3)
    for backend in ("numpy", "torch", "tree"):
        assert mi.ksg(x, y, backend=backend, **raw) == pytest.approx(ref, rel=1e-12)


def test_large_offset_float32_matches_float64(rng: np.random.Generator) -> None:
    z = rng.standard_normal((N, 1))
    x64 = 1e4 + z
    y64 = 1e4 + z + rng.standard_normal((N, 1))
    exact = mi.ksg(x64 - 1e4, y64 - 1e4)
    assert mi.ksg(x64, y64) == pytest.approx(exact, abs=1e-9)
    # float32 stores 1e4 + N(0,1) on a 1e-3 grid: dequantised, the estimate moves by far less than its s.d.
    assert mi.ksg(x64.astype(np.float32), y64.astype(np.float32)) == pytest.approx(exact, abs=0.01)
    # the float32 distance kernel centres before casting, so the offset cannot cancel catastrophically
    for backend in ("numpy", "torch"):
        got = mi.ksg(x64, y64, backend=backend, precision="float32", standardize=False)
        assert got == pytest.approx(exact, abs=0.01)


def test_bf16_and_duplicates_stay_finite(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, N, 8, 0.5)
    ref = mi.ksg(x, y)
    xb = torch.tensor(x, dtype=torch.bfloat16)
    yb = torch.tensor(y, dtype=torch.bfloat16)
    got = mi.ksg(xb, yb)
    assert np.isfinite(got) and got == pytest.approx(ref, abs=0.05)
    xd, yd = np.vstack([x[:1000], x[:1000]]), np.vstack([y[:1000], y[:1000]])
    assert mi.ksg(xd, yd) == pytest.approx(mi.ksg(x[:1000], y[:1000]), rel=1e-9)
    no_dedup = mi.ksg(xd, yd, dedup=False, jitter=None, backend="numpy")
    assert np.isfinite(no_dedup)


@pytest.mark.parametrize("proj", ["pca", "random"])
def test_projection_options(proj: str, rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, N, 48, 1.0)
    a = mi.ksg(x, y, proj=proj, p=8)
    b = mi.ksg(x, y, proj=proj, p=16)
    assert 0.5 < a < b < true_mi(48, 1.0)
    assert mi.ksg(x, y, proj=proj, seed=1) == pytest.approx(mi.ksg(x, y, proj=proj, seed=1), rel=0)


def test_sliced(rng: np.random.Generator) -> None:
    x, y = noisy_pair(rng, 1000, 16, 1.0)
    dep = mi.sliced(x, y, n_slices=16)
    assert dep == pytest.approx(mi.sliced(y, x, n_slices=16), rel=1e-9)
    assert dep > 0.2
    assert abs(mi.sliced(x, rng.standard_normal(x.shape), n_slices=16)) < 0.03
    assert mi.sliced(x, x + 2.0 * (y - x), n_slices=16) < dep
    assert abs(mi.sliced(x, y, n_slices=16, shared=False)) < dep / 3
    with pytest.raises(ValueError, match="shared"):
        mi.sliced(x, y[:, :8])


def test_huge_float64_values_keep_their_estimate(rng: np.random.Generator) -> None:
    """Dequantisation noise of a float64 source is built in float64: at |x| ~ 1e60 a float32 buffer overflowed."""
    x, y = noisy_pair(rng, 500, 2, 1.0)
    assert mi.ksg(x * 1e60, y * 1e60) == pytest.approx(mi.ksg(x, y), abs=1e-9)
