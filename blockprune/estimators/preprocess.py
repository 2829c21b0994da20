"""Shared preprocessing: duplicate removal, standardisation, dequantisation jitter, projection.

Why each step exists (hidden states are not textbook Gaussian samples):

* Duplicate rows (repeated tokens, padding) give zero k-NN distances: KL entropy becomes -inf and KSG
  counts become ties. Exact duplicate rows are dropped (for a pair, a row is dropped when both its x and y
  repeat an earlier row).
* bf16/fp16 activations sit on a coarse grid, so many coordinates tie. ``jitter="auto"`` adds seeded uniform
  noise of one ulp of the *source* dtype at each value (dequantisation): it undoes the rounding instead of
  adding a new scale, so it is negligible for float64 input and exactly as large as needed for bf16.
* Standardisation ("robust": median / IQR per dimension with MAD, std and 1 as fall-backs for a zero
  scale) removes massive-activation dimensions and layer-to-layer norm growth. X and Y are scaled
  separately. The statistics are taken *before* jitter so a constant dimension stays near-constant.
* Projection to ``p`` dims changes what is measured: the estimate is of I(XW; YW) (or H(XW)), which by
  data processing is at most I(X; Y). "pca" keeps the p directions of largest variance of [X; Y] stacked
  (one shared basis, because h_{l-1} and h_l live in the same residual coordinates), "random" a seeded
  random orthonormal basis (distance-preserving on average, but no longer invariant to permuting or
  flipping input dimensions). k-NN estimators are far less biased in 16 dims than in 4096.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ._threads import blas_threads
from ._validate import FloatFormat, check_choice

Standardize = bool | Literal["robust", "zscore", "none"] | None
Proj = Literal["none", "pca", "random"]
Jitter = float | Literal["auto"] | None

_CHUNK_ROWS = 2048  # fixed so the noise stream, and thus every result, is independent of machine settings
_EXACT_PCA_MAX_D = 1024


@dataclass(frozen=True)
class Options:
    """The shared options; defaults differ per estimator (MI: robust + pca16, entropy: none)."""

    standardize: Standardize = "robust"
    jitter: Jitter = "auto"
    dedup: bool = True
    proj: Proj = "none"
    p: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.standardize, "standardize", (True, False, None, "robust", "zscore", "none"))
        check_choice(self.proj, "proj", ("none", "pca", "random"))
        jit = self.jitter
        if not (jit is None or jit == "auto" or (isinstance(jit, int | float) and jit >= 0)):
            raise ValueError(f"jitter must be 'auto', None or a float >= 0; got {self.jitter!r}")
        if isinstance(self.p, bool) or not isinstance(self.p, int | np.integer) or self.p < 1:
            raise ValueError(f"p must be a positive integer; got {self.p!r}")

    @property
    def mode(self) -> str:
        s = self.standardize
        return "robust" if s is True else "none" if s in (False, None) else str(s)


def _quartiles(a: np.ndarray, cols: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """25/50/75 % points per column (numpy's linear interpolation), from sorted contiguous column chunks:
    sorting rows of a transposed chunk is ~2x faster than np.percentile along a strided axis."""
    n, d = a.shape
    pos = np.array([0.25, 0.5, 0.75]) * (n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    out = np.empty((3, d))
    for c in range(0, d, cols):
        srt = np.sort(a[:, c : c + cols].T, axis=1).astype(np.float64)
        out[:, c : c + cols] = (srt[:, lo] * (1 - frac) + srt[:, hi] * frac).T
    return out[0], out[1], out[2]


def column_stats(a: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension centre and scale; a zero scale falls back (IQR → MAD → std → 1), never 0."""
    d = a.shape[1]
    if mode == "none":
        return np.zeros(d), np.ones(d)
    if mode == "zscore":
        center = a.mean(axis=0, dtype=np.float64)
        scale = a.std(axis=0, dtype=np.float64)
    else:
        q25, center, q75 = _quartiles(a)
        scale = (q75 - q25) / 1.3489795
        zero = scale <= 0
        if zero.any():
            sub = a[:, zero].astype(np.float64)
            scale[zero] = 1.4826 * np.median(np.abs(sub - center[zero]), axis=0)
            zero2 = scale <= 0
            if zero2.any():
                scale[zero] = np.where(zero2[zero], sub.std(axis=0), scale[zero])
    scale = np.where(scale > 0, scale, 1.0)
    return np.asarray(center, np.float64), np.asarray(scale, np.float64)


def dequantization_noise(v: np.ndarray, fmt: FloatFormat, rng: np.random.Generator) -> np.ndarray:
    """Uniform noise over each value's rounding cell in the source format, so v + noise still rounds to v.

    The cell is ±½ ulp, except just below an exact power of two, where the next value down is only half an
    ulp away. Drawn strictly inside the cell (x0.999) so no sample lands on a rounding tie.
    """
    u = rng.random(v.shape, dtype=np.float32)
    u -= np.float32(0.5)
    step = fmt.ulp(v)
    if fmt.nmant < 23:  # only 16-bit sources: at float32/64 resolution the half-cell is irrelevant
        toward_zero = (u * v < 0) & (np.abs(v) * (2.0**-fmt.nmant) == step)
        step[toward_zero] *= 0.5
    step *= 0.999
    u *= step
    return u


def standardize_and_jitter(
    a: np.ndarray, fmt: FloatFormat, opts: Options, rng: np.random.Generator
) -> np.ndarray:
    """(a - centre) / scale + noise, in float64, chunked over rows to bound temporaries."""
    center, scale = column_stats(a, opts.mode)
    out = np.empty(a.shape, dtype=np.float64)
    jit = opts.jitter
    for s in range(0, a.shape[0], _CHUNK_ROWS):
        blk = a[s : s + _CHUNK_ROWS]
        z = out[s : s + _CHUNK_ROWS]
        np.subtract(blk, center, out=z)
        z /= scale
        if jit == "auto":
            z += dequantization_noise(blk, fmt, rng) / scale  # float64 divide: scale may be < 1e-38
        elif jit:
            z += (rng.random(blk.shape, dtype=np.float32) - np.float32(0.5)) * (2.0 * float(jit))
    return out


def unique_rows(*arrays: np.ndarray) -> np.ndarray | None:
    """Sorted indices of the first occurrence of each distinct (joint) row, or None when all are distinct."""
    n = arrays[0].shape[0]
    key = np.zeros(n, dtype=np.int64)
    for a in arrays:
        c = np.ascontiguousarray(a)
        v = c.view(np.dtype((np.void, c.dtype.itemsize * c.shape[1]))).ravel()
        _, inv = np.unique(v, return_inverse=True)
        key = key * (int(inv.max()) + 1) + inv.ravel()
        _, key = np.unique(key, return_inverse=True)  # re-densify so the product cannot overflow
    _, first = np.unique(key, return_index=True)
    return None if first.size == n else np.sort(first)


def _sign_fix(w: np.ndarray) -> np.ndarray:
    """Eigenvectors have arbitrary sign; make the largest entry positive so results are reproducible."""
    idx = np.argmax(np.abs(w), axis=0)
    return w * np.sign(w[idx, np.arange(w.shape[1])])


def _pca_basis(arrays: list[np.ndarray], p: int, rng: np.random.Generator) -> np.ndarray:
    n = sum(a.shape[0] for a in arrays)
    mean = sum(a.sum(axis=0) for a in arrays) / n
    d = arrays[0].shape[1]
    if d <= _EXACT_PCA_MAX_D:
        cov = np.zeros((d, d))
        for a in arrays:
            c = a - mean
            cov += c.T @ c
        with blas_threads(1):
            _, vecs = np.linalg.eigh(cov)
        return _sign_fix(vecs[:, ::-1][:, :p])
    # Randomised range finder with power iterations (Halko et al.) on the implicit stacked, centred data:
    # a d x d covariance would cost O(N d^2) and its eigh O(d^3). float32 products: a basis needs no more.
    a32 = [a.astype(np.float32) for a in arrays]
    m32 = mean.astype(np.float32)

    def z_times(m: np.ndarray) -> np.ndarray:  # ([A1; A2] - mean) @ m
        m = m.astype(np.float32)
        return np.vstack([a @ m - m32 @ m for a in a32]).astype(np.float64)

    def zt_times(q: np.ndarray) -> np.ndarray:  # ([A1; A2] - mean)^T @ q
        out, s = np.zeros((d, q.shape[1])), 0
        for a in a32:
            qa = q[s : s + a.shape[0]].astype(np.float32)
            out += a.T @ qa - np.outer(m32, qa.sum(axis=0))
            s += a.shape[0]
        return out

    def orth(m: np.ndarray) -> np.ndarray:  # thin factorisations: single-threaded (see _threads)
        with blas_threads(1):
            return np.linalg.qr(m)[0]

    q = orth(z_times(rng.standard_normal((d, p + 10))))
    for _ in range(4):
        q = orth(z_times(orth(zt_times(q))))
    b = zt_times(q).T
    with blas_threads(1):
        _, _, vt = np.linalg.svd(b, full_matrices=False)
    return _sign_fix(vt[:p].T)


def fit_basis(arrays: list[np.ndarray], opts: Options) -> np.ndarray | None:
    """Orthonormal (d, p) basis shared by all ``arrays``, or None when no projection applies (p >= d)."""
    d = arrays[0].shape[1]
    if opts.proj == "none" or opts.p >= d:
        return None
    rng = np.random.default_rng([opts.seed, 3])
    if opts.proj == "random":
        q, _ = np.linalg.qr(rng.standard_normal((d, opts.p)))
        return q
    return _pca_basis(arrays, opts.p, rng)


def balance(a: np.ndarray) -> np.ndarray:
    """Scale to median row norm sqrt(dim): after a shared projection one side may carry far less
    variance, and the joint max-norm then ignores the other side (KSG collapses to 0)."""
    c = a - np.median(a, axis=0)
    m = float(np.median(np.sqrt(np.einsum("ij,ij->i", c, c))))
    return c * (np.sqrt(a.shape[1]) / m) if m > 0 else c


def prepare_pair(
    x: np.ndarray, xf: FloatFormat, y: np.ndarray, yf: FloatFormat, opts: Options
) -> tuple[np.ndarray, np.ndarray]:
    """MI pipeline: dedup → standardise x and y separately (+ jitter) → shared projection → balance."""
    if opts.dedup:
        keep = unique_rows(x, y)
        if keep is not None:
            x, y = x[keep], y[keep]
    zx = standardize_and_jitter(x, xf, opts, np.random.default_rng([opts.seed, 1]))
    zy = standardize_and_jitter(y, yf, opts, np.random.default_rng([opts.seed, 2]))
    if zx.shape[1] == zy.shape[1]:
        w = fit_basis([zx, zy], opts)
        if w is not None:
            zx, zy = zx @ w, zy @ w
            if opts.mode != "none":
                zx, zy = balance(zx), balance(zy)
    else:  # no shared coordinates: each side gets its own basis
        wx, wy = fit_basis([zx], opts), fit_basis([zy], opts)
        zx = zx if wx is None else zx @ wx
        zy = zy if wy is None else zy @ wy
    return zx, zy


def prepare_single(x: np.ndarray, xf: FloatFormat, opts: Options) -> np.ndarray:
    """The entropy pipeline: dedup → (standardise) + jitter → projection."""
    if opts.dedup:
        keep = unique_rows(x)
        if keep is not None:
            x = x[keep]
    z = standardize_and_jitter(x, xf, opts, np.random.default_rng([opts.seed, 1]))
    w = fit_basis([z], opts)
    return z if w is None else z @ w
