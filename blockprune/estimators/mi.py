"""Mutual information estimators I(x; y) of paired samples (n_tokens, d_x), (n_tokens, d_y), in nats.

``mi.ksg`` defaults are chosen for transformer hidden states, where textbook KSG fails: in 4096 dims KSG
underestimates badly, and when one side's distances dominate (residual norms grow layer to layer) the joint
max-norm ignores the other side and the estimate collapses to 0. So by default: drop duplicate rows,
robustly z-score x and y separately, dequantise (seeded), project both onto one shared 16-dim PCA basis,
rescale each side to a common radius, then KSG algorithm 1 with k = 3 and Euclidean marginals.

What the default pipeline is invariant to: any transform applied to *both* x and y by permuting rows,
permuting dimensions, flipping signs or scaling coordinates positively (standardisation undoes it; PCA
is equivariant). A transform of x alone is undone by standardisation, but with a shared projection the
basis can change, so only ``proj="none"`` is invariant to sign flips or permutations of one side alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import digamma

from . import knn as _knn
from ._registry import register
from ._threads import blas_threads
from ._validate import as_pair, check_choice, check_k
from .knn import Backend, Norm, Precision
from .preprocess import Jitter, Options, Proj, Standardize, prepare_pair


def ksg_from_counts(nx: np.ndarray, ny: np.ndarray, k: int, n: int, variant: int = 1) -> float:
    """Kraskov–Stögbauer–Grassberger formula from the marginal neighbour counts."""
    if variant == 1:
        return float(digamma(k) + digamma(n) - np.mean(digamma(nx + 1) + digamma(ny + 1)))
    return float(digamma(k) - 1.0 / k + digamma(n) - np.mean(digamma(nx) + digamma(ny)))


def ksg_float32_ok(x: np.ndarray, y: np.ndarray, opts: Options, precision: Precision, norm: Norm) -> bool:
    """Whether mi.ksg may keep standardised arrays in float32: they are projected to p dims, or the k-NN
    stage computes on them in float32 anyway. Not for a float64 distance stage on the raw dims."""
    dims = (x.shape[1], y.shape[1])
    if opts.proj != "none" and opts.p < min(dims):
        return True
    return _knn.resolve_precision(precision, dims, norm) is np.float32


@register("mi.ksg", "mi", label="KSG",
          description="multivariate KSG of whole states (16-dim shared PCA; not MI-PRUN's per-coordinate reading)")
def ksg(
    x: Any, y: Any = None, *, k: int = 3, variant: int = 1, norm: Norm = "euclidean",
    standardize: Standardize = "robust", jitter: Jitter = "auto", dedup: bool = True, proj: Proj = "pca",
    p: int = 16, seed: int = 0, backend: Backend = "auto", device: str | None = None,
    block_size: int | None = None, n_threads: int | None = None, precision: Precision = "auto",
) -> float:
    """KSG estimator; the joint distance is max(|Δx|, |Δy|) with ``norm`` in each marginal.

    variant 1: eps_i = k-th joint neighbour distance, n_x = #{j: |x_i - x_j| < eps_i}, and
    I = ψ(k) + ψ(N) - <ψ(n_x + 1) + ψ(n_y + 1)>. Variant 2 uses the marginal extents of the k
    neighbours and I = ψ(k) - 1/k + ψ(N) - <ψ(n_x) + ψ(n_y)>. "euclidean" lets distances come from matrix
    products (BLAS or torch, d = 4096 is affordable); "chebyshev" is the textbook form. Results do not
    depend on ``backend``, ``block_size`` or ``n_threads`` beyond float rounding.
    """
    xa, xf, ya, yf = as_pair(x, y, "mi.ksg")
    check_k(xa.shape[0], k)
    check_choice(variant, "variant", (1, 2))
    _knn.check_engine_options(backend, precision, block_size, norm)
    opts = Options(standardize=standardize, jitter=jitter, dedup=dedup, proj=proj, p=p, seed=seed)
    zx, zy = prepare_pair(xa, xf, ya, yf, opts, float32_ok=ksg_float32_ok(xa, ya, opts, precision, norm))
    n = zx.shape[0]
    check_k(n, k, " distinct rows (after dropping duplicates)")
    nx, ny = _knn.ksg_counts(
        zx, zy, k, variant=variant, norm=norm, backend=backend, device=device, block_size=block_size,
        n_threads=n_threads, precision=precision,
    )
    return ksg_from_counts(nx, ny, k, n, variant)


def _whiten(z: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the centred column space (rank-deficient directions dropped)."""
    c = z - z.mean(axis=0)
    with blas_threads(1):  # see _threads.blas_threads
        lam, vec = np.linalg.eigh(c.T @ c)
    keep = lam > lam.max() * 1e-12 if lam.max() > 0 else np.zeros_like(lam, dtype=bool)
    return (c @ vec[:, keep]) / np.sqrt(lam[keep])


def wishart_logdet_bias(dim: int, dof: int) -> float:
    """E[ln det S] - ln det Σ for a sample covariance S with ``dof`` degrees of freedom (N - 1): the exact
    Wishart expectation Σ_{i=1..dim} ψ((dof - i + 1) / 2) + dim ln(2 / dof), for Gaussian data."""
    i = np.arange(1, dim + 1)
    return float(np.sum(digamma((dof - i + 1) / 2.0)) + dim * np.log(2.0 / dof))


@register("mi.gaussian", "mi", label="Gaussian",
          description="multivariate Gaussian MI (canonical correlations)")
def gaussian(
    x: Any, y: Any = None, *, standardize: Standardize = False, proj: Proj = "none", p: int = 16,
    seed: int = 0, bias_correct: bool = False,
) -> float:
    """-½ Σ log(1 - ρ_i²) over the canonical correlations ρ_i: exact for jointly Gaussian data.

    Invariant to any invertible affine map of x and of y separately. Needs N > d_x + d_y, otherwise the
    sample canonical correlations are trivially 1. The plug-in value is biased upward by about
    d_x d_y / (2N) (0.016 nats at d = 8, N = 2000); ``bias_correct=True`` subtracts the exact Gaussian
    bias ½ [b(d_x) + b(d_y) - b(d_x + d_y)], b = ``wishart_logdet_bias``, which makes it unbiased for
    Gaussian data. It removes bias, not sampling noise (s.d. about sqrt(d) ρ / sqrt(N) per draw).
    """
    xa, xf, ya, yf = as_pair(x, y, "mi.gaussian")
    opts = Options(standardize=standardize, jitter=None, dedup=False, proj=proj, p=p, seed=seed)
    zx, zy = prepare_pair(xa, xf, ya, yf, opts)
    n = zx.shape[0]
    if n <= zx.shape[1] + zy.shape[1]:
        raise ValueError(
            f"mi.gaussian needs N > d_x + d_y (N={n}, d_x={zx.shape[1]}, d_y={zy.shape[1]}); "
            "use proj='pca' with a smaller p"
        )
    ux, uy = _whiten(zx), _whiten(zy)
    if ux.shape[1] == 0 or uy.shape[1] == 0:
        return 0.0
    rho = np.clip(np.linalg.svd(ux.T @ uy, compute_uv=False), 0.0, 1.0)
    if np.any(rho >= 1.0):
        return float("inf")
    value = float(-0.5 * np.sum(np.log1p(-(rho**2))))
    if bias_correct:
        dx, dy = ux.shape[1], uy.shape[1]  # ranks actually used
        b = wishart_logdet_bias
        value -= 0.5 * (b(dx, n - 1) + b(dy, n - 1) - b(dx + dy, n - 1))
    return value


@register("mi.sliced", "mi", label="sliced",
          description="sliced MI (mean 1-D KSG over random projections)")
def sliced(
    x: Any, y: Any = None, *, n_slices: int = 64, shared: bool = True, k: int = 3,
    standardize: Standardize = "robust", jitter: Jitter = "auto", dedup: bool = True, seed: int = 0,
    backend: Backend = "auto", n_threads: int | None = None,
) -> float:
    """Sliced MI: mean over random unit directions θ, φ of KSG I(θ·x; φ·y), each a cheap 1-D problem
    (solved with cKDTree under backend="auto").

    ``shared=True`` (default, needs d_x == d_y) uses φ = θ: x and y are successive residual states in the
    same coordinates. ``shared=False`` draws φ independently, the definition of Goldfeld & Greenewald
    (2021), which for high-dimensional residual streams is close to 0 for almost every pair of slices.
    """
    xa, xf, ya, yf = as_pair(x, y, "mi.sliced")
    check_k(xa.shape[0], k)
    if isinstance(n_slices, bool) or not isinstance(n_slices, int | np.integer) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer; got {n_slices!r}")
    if shared and xa.shape[1] != ya.shape[1]:
        raise ValueError(
            f"shared slices need d_x == d_y; got {xa.shape[1]} and {ya.shape[1]} (use shared=False)"
        )
    _knn.check_engine_options(backend, "auto", None)
    opts = Options(standardize=standardize, jitter=jitter, dedup=dedup, proj="none", seed=seed)
    zx, zy = prepare_pair(xa, xf, ya, yf, opts)
    n = zx.shape[0]
    check_k(n, k, " distinct rows (after dropping duplicates)")
    rng = np.random.default_rng([seed, 5])
    theta = rng.standard_normal((zx.shape[1], n_slices))
    phi = theta if shared else rng.standard_normal((zy.shape[1], n_slices))
    u = zx @ (theta / np.linalg.norm(theta, axis=0))
    v = zy @ (phi / np.linalg.norm(phi, axis=0))
    vals = []
    for s in range(n_slices):
        nx, ny = _knn.ksg_counts(u[:, s : s + 1], v[:, s : s + 1], k, backend=backend, n_threads=n_threads)
        vals.append(ksg_from_counts(nx, ny, k, n))
    return float(np.mean(vals))
