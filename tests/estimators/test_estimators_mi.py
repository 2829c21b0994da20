"""Accuracy and invariances of the mutual-information estimators (seeded; each can fail)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from estimator_samples import noisy_pair, true_mi

from blockprune import estimators
from blockprune.estimators import mi

pytestmark = pytest.mark.unit

N = 2000
N_LARGE = 20000  # single draws of KSG d = 1 and of the Gaussian baseline: s.d. small enough for the bars
N_INDEP = 8000  # single draws of KSG on independent X, Y
SEED = 20250101  # the one seed of every single-draw acceptance case (the constant of conftest's rng)
STAT_SEEDS = [SEED + i for i in range(20)]  # the multi-draw checks; SEED itself is the first

# Spread of one draw, measured by tests/estimators/spread_measurements.py over seeds SEED + i (KSG d = 1:
# 200 seeds at N = 2,000, 40 at N = 20,000; independent: 100 / 30; Gaussian baseline: 200 / 100). Every
# single-draw bar below is at least 3 of these s.d. beyond the measured mean error.
KSG_D1_SD = {2000: {0.5: 0.0262, 1.0: 0.0247, 2.0: 0.0215}, 20000: {0.5: 0.0080, 1.0: 0.0069, 2.0: 0.0062}}
KSG_D1_BIAS_2000 = {0.5: 0.0075, 1.0: 0.0032, 2.0: 0.0010}  # 200-seed mean minus the truth
KSG_INDEP_SD = {2000: {1: 0.0163, 8: 0.0185, 64: 0.0234}, 8000: {1: 0.0086, 8: 0.0090, 64: 0.0086}}


def draw(d: int, sigma: float | None, seed: int = SEED, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    """One sample: Y = X + sigma * eps, or independent X, Y when sigma is None."""
    rng = np.random.default_rng(seed)
    if sigma is None:
        return rng.standard_normal((n, d)), rng.standard_normal((n, d))
    return noisy_pair(rng, n, d, sigma)


def rho(sigma: float) -> float:
    return 1.0 / math.sqrt(1.0 + sigma**2)


def gaussian_sd(d: int, sigma: float, n: int) -> float:
    """Delta-method s.d. of one plug-in draw, sqrt(d) ρ / sqrt(N) (measured: within 15 % of it at both N)."""
    return math.sqrt(d) * rho(sigma) / math.sqrt(n)


def gaussian_bias(d: int, n: int) -> float:
    """Exact Wishart bias of the plug-in estimate for Gaussian data (see mi.gaussian)."""
    return 0.5 * (2 * mi.wishart_logdet_bias(d, n - 1) - mi.wishart_logdet_bias(2 * d, n - 1))


# ---------------------------------------------------------------- acceptance (issue #3): one seeded draw each
# At N = 2,000 one KSG draw has s.d. 0.022-0.026 nats, so a 0.03 bar would be only 1.2-1.4 s.d.; the single
# draws are taken at an N where the bar is >= 3 s.d. (stated per case), the N = 2,000 behaviour is checked
# over 20 seeds further down.
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_ksg_d1_single_draw_within_0_03(sigma: float) -> None:
    # N = 20,000: one draw's s.d. 0.0062-0.0080 and mean error under 0.0013, so 0.03 is >= 3.6 s.d.
    # defaults: p=16 >= d=1 so nothing is projected; robust z-scoring is harmless in 1-D
    assert 3 * KSG_D1_SD[N_LARGE][sigma] + 0.0013 <= 0.03
    x, y = draw(1, sigma, n=N_LARGE)
    assert mi.ksg(x, y) == pytest.approx(true_mi(1, sigma), abs=0.03)


@pytest.mark.parametrize("d", [1, 8])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_baseline_single_draw_within_3_5_sd(d: int, sigma: float) -> None:
    # N = 20,000; measured s.d. over 100 seeds 0.0026-0.0054 (d = 1) and 0.0089-0.018 (d = 8), matching the
    # delta method; the bar is 3.5 delta-method s.d. around the truth plus the exact plug-in bias (≤ 0.0016)
    x, y = draw(d, sigma, n=N_LARGE)
    err = mi.gaussian(x, y) - true_mi(d, sigma) - gaussian_bias(d, N_LARGE)
    assert abs(err) < 3.5 * gaussian_sd(d, sigma, N_LARGE), err


@pytest.mark.parametrize("d", [1, 8, 64])
def test_independent_single_draw_below_0_03(d: int) -> None:
    # N = 8,000: one draw's s.d. 0.0086-0.0090 and mean 0.0007-0.0029 over 30 seeds: 0.03 is >= 3.1 s.d.
    # beyond the mean
    assert 3 * KSG_INDEP_SD[N_INDEP][d] + 0.0029 <= 0.03
    x, y = draw(d, None, n=N_INDEP)
    assert abs(mi.ksg(x, y)) < 0.03


# ---------------------------------------------------------------- the same cases over 20 fixed seeds, N = 2,000
# The 20-draw mean must lie within 3 standard errors (measured one-draw s.d. / sqrt(20)) of the closed form;
# the draws' s.d. must be below 1.5 times the measured one; and at least half of the draws must meet
# 3 one-draw s.d. (about 99 % of them should).
@pytest.mark.parametrize(("d", "sigma"), [(1, 0.5), (1, 1.0), (1, 2.0), (1, None), (8, None), (64, None)])
def test_ksg_over_20_seeds(d: int, sigma: float | None) -> None:
    truth = 0.0 if sigma is None else true_mi(d, sigma)
    sd = KSG_D1_SD[N][sigma] if sigma is not None else KSG_INDEP_SD[N][d]
    est = np.array([mi.ksg(*draw(d, sigma, seed)) for seed in STAT_SEEDS])
    err = est - truth
    assert abs(err.mean()) < 3 * sd / math.sqrt(len(est)), (err.mean(), sd)
    assert est.std(ddof=1) < 1.5 * sd, est
    assert np.mean(np.abs(err) < 3 * sd) >= 0.5, est


@pytest.mark.parametrize("d", [1, 8])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0])
def test_gaussian_baseline_over_20_seeds(d: int, sigma: float) -> None:
    # delta method: one draw's s.d. is sqrt(d) rho / sqrt(N), i.e. 2.5-9 % of the truth at d = 1. The mean
    # must sit within 3 standard errors of the truth plus the plug-in bias, and the spread must match the
    # delta method.
    sd = gaussian_sd(d, sigma, N)
    est = np.array([mi.gaussian(*draw(d, sigma, seed)) for seed in STAT_SEEDS])
    assert abs(est.mean() - true_mi(d, sigma) - gaussian_bias(d, N)) < 3 * sd / math.sqrt(len(est)), est
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
