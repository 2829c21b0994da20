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

Speed (at N = 8192, d = 4096 this once cost 6x the k-NN stage it feeds): elementwise passes run on
cache-sized row blocks, quartiles come from a tiled transpose and a SIMD sort, duplicates are found by
hashing a few columns and comparing only colliding rows in full, KSG may keep the standardised arrays in
float32 (``float32_ok``: one more rounding, 6e-8 relative, where it computes in float32 or projects anyway)
so the PCA reads them without copies, and matrix products run as fixed row blocks on a thread pool with
single-threaded BLAS (a statically split multi-threaded BLAS call stalls on busy shared cores: 0.25 s
instead of 1 ms was measured for an 8192 x 64 Gram matrix). None of it changes what is estimated, and
results are identical for any thread count: the blocks, and the order their partial sums are added in,
are fixed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import scipy.linalg

from ._threads import blas_threads, default_threads
from ._validate import FloatFormat, check_choice
from .knn import _FLOAT32_MIN_DIM

Standardize = bool | Literal["robust", "zscore", "none"] | None
Proj = Literal["none", "pca", "random"]
Jitter = float | Literal["auto"] | None

T = TypeVar("T")
R = TypeVar("R")

_BLOCK_ELEMS = 1 << 16  # elements per row block of the elementwise passes: a few float64 temporaries fit L2
_GEMM_ELEMS = 1 << 22  # elements per row block of a matrix product (fixed: results must not depend on cores)
_TILE = 256  # rows x columns of one tile of the transposed copy in _quartiles
_HASH_COLS = 64  # columns sampled for the duplicate pre-filter
_PARALLEL_MIN_WORK = 1 << 20  # below this many element operations a thread pool costs more than it saves
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


def _imap(fn: Callable[[T], R], items: Sequence[T], work: float) -> Iterator[R]:
    """fn(item) for each item, yielded in order; on a thread pool when there are several items, cores and
    ``work`` (element operations) enough to pay for it. numpy releases the GIL in sorts, elementwise loops and
    BLAS; callers hold BLAS at one thread, so the pool's dynamic scheduling is the only parallelism."""
    threads = min(len(items), default_threads())
    if threads <= 1 or work < _PARALLEL_MIN_WORK:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        yield from pool.map(fn, items)


def _map(fn: Callable[[T], R], items: Sequence[T], work: float) -> list[R]:
    return list(_imap(fn, items, work))


class _Scratch(threading.local):
    """A per-thread buffer reused across tasks: fresh multi-MiB arrays per task cost page faults."""

    def get(self, shape: tuple[int, int], dtype: Any) -> np.ndarray:
        size = shape[0] * shape[1]
        buf = getattr(self, "buf", None)
        if buf is None or buf.dtype != dtype or buf.size < size:
            buf = self.buf = np.empty(size, dtype=dtype)
        return buf[:size].reshape(shape)


def _quartiles(a: np.ndarray, cols: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """25/50/75 % points per column (numpy's linear interpolation), from sorted contiguous column chunks.

    Sorting rows of a transposed chunk is far faster than np.percentile along a strided axis; the transposed
    copy is made tile by tile (a plain strided copy of a wide array thrashes the cache and cost as much as
    the sort), and np.sort beats a multi-kth np.partition here because it is SIMD. Chunks are independent,
    so they run on the thread pool.
    """
    n, d = a.shape
    pos = np.array([0.25, 0.5, 0.75]) * (n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    out = np.empty((3, d))
    scratch = _Scratch()

    def chunk(c: int) -> None:
        w = min(cols, d - c)
        t = scratch.get((w, n), a.dtype)
        for r in range(0, n, _TILE):
            np.copyto(t[:, r : r + _TILE], a[r : r + _TILE, c : c + w].T)
        t.sort(axis=1)
        out[:, c : c + w] = (t[:, lo].astype(np.float64) * (1 - frac) + t[:, hi].astype(np.float64) * frac).T

    _map(chunk, range(0, d, cols), n * d * 8)
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
    if fmt.nmant > 23:  # float64 source: a float32 noise buffer would overflow where |v| > ~1e38 / 2^-52
        u = u.astype(np.float64)
    if fmt.nmant < 23:  # only 16-bit sources: at float32/64 resolution the half-cell is irrelevant
        toward_zero = (u * v < 0) & (np.abs(v) * (2.0**-fmt.nmant) == step)
        step[toward_zero] *= 0.5
    step *= 0.999
    u *= step
    return u


def standardize_and_jitter(
    a: np.ndarray, fmt: FloatFormat, opts: Options, rng: np.random.Generator,
    dtype: type[np.floating] = np.float64, stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """(a - centre) / scale + noise, computed in float64 and stored as ``dtype``.

    Row blocks are small enough that the temporaries stay in cache (memory traffic, not arithmetic, is the
    cost here). The noise is drawn in row-major order, so the block size never changes it. Centring happens
    in float64 before any rounding to float32, so a large common offset costs no precision. ``stats``:
    (centre, scale) from ``column_stats`` when the caller already has them.
    """
    center, scale = column_stats(a, opts.mode) if stats is None else stats
    n, d = a.shape
    out = np.empty((n, d), dtype=dtype)
    rows = max(1, _BLOCK_ELEMS // d)
    direct = out.dtype == np.float64
    zbuf = None if direct else np.empty((min(rows, n), d))
    tmp = np.empty((min(rows, n), d)) if opts.jitter == "auto" else None
    jit = opts.jitter
    for s in range(0, n, rows):
        e = min(s + rows, n)
        blk = a[s:e]
        z = out[s:e] if zbuf is None else zbuf[: e - s]
        np.subtract(blk, center, out=z)
        z /= scale
        if tmp is not None:
            t = tmp[: e - s]
            np.divide(dequantization_noise(blk, fmt, rng), scale, out=t)  # float64: scale may be < 1e-38
            z += t
        elif jit:
            z += (rng.random(blk.shape, dtype=np.float32) - np.float32(0.5)) * (2.0 * float(jit))
        if zbuf is not None:
            out[s:e] = z
    return out


def _exact_unique(arrays: list[np.ndarray]) -> np.ndarray:
    """Sorted indices of the first occurrence of each distinct joint row, comparing rows bytewise."""
    n = arrays[0].shape[0]
    key = np.zeros(n, dtype=np.int64)
    for a in arrays:
        c = np.ascontiguousarray(a)
        v = c.view(np.dtype((np.void, c.dtype.itemsize * c.shape[1]))).ravel()
        _, inv = np.unique(v, return_inverse=True)
        key = key * (int(inv.max()) + 1) + inv.ravel()
        _, key = np.unique(key, return_inverse=True)  # re-densify so the product cannot overflow
    _, first = np.unique(key, return_index=True)
    return np.sort(first)


def _row_hash(a: np.ndarray) -> np.ndarray:
    """A float per row from up to _HASH_COLS evenly spaced columns. Equal rows always hash equal (every row
    goes through the same products and the same row-wise summation order); unequal rows almost never do."""
    d = a.shape[1]
    cols = np.unique(np.linspace(0, d - 1, min(d, _HASH_COLS)).round().astype(np.int64))
    weights = np.random.default_rng(cols.size).uniform(0.5, 1.5, cols.size)
    h = (a[:, cols].astype(np.float64) * weights).sum(axis=1)
    h[~np.isfinite(h)] = np.inf  # overflow or inf - inf: all such rows become candidates
    return h


def unique_rows(*arrays: np.ndarray) -> np.ndarray | None:
    """Sorted indices of the first occurrence of each distinct (joint) row, or None when all are distinct.

    Exact (bytewise, as before): rows whose joint hash is unique are certainly distinct, so only rows in a
    hash collision are compared in full. Sorting all N full 16 KB rows was the old, slow way.
    """
    n = arrays[0].shape[0]
    keys = [_row_hash(a) for a in arrays]
    order = np.lexsort(keys[::-1])
    same = np.ones(max(n - 1, 0), dtype=bool)
    for k in keys:
        ks = k[order]
        same &= ks[1:] == ks[:-1]
    collide = np.zeros(n, dtype=bool)
    collide[order[1:][same]] = True
    collide[order[:-1][same]] = True
    cand = np.flatnonzero(collide)
    if cand.size == 0:
        return None
    first = cand[_exact_unique([a[cand] for a in arrays])]
    if first.size == cand.size:
        return None
    keep = np.ones(n, dtype=bool)
    keep[cand] = False
    keep[first] = True
    return np.flatnonzero(keep)


def _sign_fix(w: np.ndarray) -> np.ndarray:
    """Eigenvectors have arbitrary sign; make the largest entry positive so results are reproducible."""
    idx = np.argmax(np.abs(w), axis=0)
    return w * np.sign(w[idx, np.arange(w.shape[1])])


def _row_blocks(arrays: Sequence[np.ndarray], elems: int = _GEMM_ELEMS) -> list[tuple[int, int, int, int]]:
    """(array index, first row, end row, offset in the stacked arrays) of fixed-size row blocks."""
    rows = max(1, elems // arrays[0].shape[1])
    out, off = [], 0
    for i, a in enumerate(arrays):
        out += [(i, s, min(s + rows, a.shape[0]), off) for s in range(0, a.shape[0], rows)]
        off += a.shape[0]
    return out


def _pca_basis(arrays: list[np.ndarray], p: int, rng: np.random.Generator) -> np.ndarray:
    n = sum(a.shape[0] for a in arrays)
    mean = sum(a.sum(axis=0, dtype=np.float64) for a in arrays) / n  # float64 sums even of float32 arrays
    d = arrays[0].shape[1]
    blocks = _row_blocks(arrays)
    if d <= _EXACT_PCA_MAX_D:

        def gram(b: tuple[int, int, int, int]) -> np.ndarray:
            c = arrays[b[0]][b[1] : b[2]] - mean
            return c.T @ c

        cov = np.zeros((d, d))
        for part in _imap(gram, blocks, n * d * d):  # added in block order: the same sum for any core count
            cov += part
        _, vecs = scipy.linalg.eigh(cov, subset_by_index=[d - p, d - 1])  # only the top p: 3-10x cheaper
        return _sign_fix(vecs[:, ::-1])
    # Randomised range finder with power iterations (Halko et al.) on the implicit stacked, centred data:
    # a d x d covariance would cost O(N d^2) and its eigh O(d^3). float32 products: a basis needs no more,
    # and float32 arrays (see prepare_pair) are used as they are, without a copy.
    a32 = [np.asarray(a, dtype=np.float32) for a in arrays]
    m32 = mean.astype(np.float32)
    k = p + 10

    def z_times(m: np.ndarray) -> np.ndarray:  # ([A1; A2] - mean) @ m
        m = m.astype(np.float32)
        shift = m32 @ m
        out = np.empty((n, k))

        def rows(b: tuple[int, int, int, int]) -> None:
            i, s, e, off = b
            out[off + s : off + e] = a32[i][s:e] @ m - shift

        _map(rows, blocks, n * d * k)
        return out

    def zt_times(q: np.ndarray) -> np.ndarray:  # ([A1; A2] - mean)^T @ q
        q32 = q.astype(np.float32)

        def part(b: tuple[int, int, int, int]) -> np.ndarray:
            i, s, e, off = b
            return a32[i][s:e].T @ q32[off + s : off + e]

        out = np.zeros((d, k))
        for block in _imap(part, blocks, n * d * k):
            out += block
        out -= np.outer(m32, q32.sum(axis=0, dtype=np.float64))
        return out

    def orth(m: np.ndarray) -> np.ndarray:
        return np.linalg.qr(m)[0]

    q = orth(z_times(rng.standard_normal((d, k))))
    for _ in range(4):
        q = orth(z_times(orth(zt_times(q))))
    b = zt_times(q).T
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    return _sign_fix(vt[:p].T)


def fit_basis(arrays: list[np.ndarray], opts: Options) -> np.ndarray | None:
    """Orthonormal (d, p) basis shared by all ``arrays``, or None when no projection applies (p >= d)."""
    d = arrays[0].shape[1]
    if opts.proj == "none" or opts.p >= d:
        return None
    rng = np.random.default_rng([opts.seed, 3])
    with blas_threads(1):  # the products are spread over the thread pool instead
        if opts.proj == "random":
            q, _ = np.linalg.qr(rng.standard_normal((d, opts.p)))
            return q
        return _pca_basis(arrays, opts.p, rng)


def project(z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """z @ w in float64, by row blocks on the pool; a float32 z is widened block by block, never whole."""
    n, d = z.shape
    out = np.empty((n, w.shape[1]))

    def rows(b: tuple[int, int, int, int]) -> None:
        s, e = b[1], b[2]
        out[s:e] = z[s:e].astype(np.float64, copy=False) @ w

    with blas_threads(1):  # small blocks (the widened copy fits L2) on the pool, not a threaded BLAS
        _map(rows, _row_blocks([z], 4 * _BLOCK_ELEMS), n * d * w.shape[1])
    return out


def balance(a: np.ndarray) -> np.ndarray:
    """Scale to median row norm sqrt(dim): after a shared projection one side may carry far less
    variance, and the joint max-norm then ignores the other side (KSG collapses to 0)."""
    c = a - np.median(a, axis=0)
    m = float(np.median(np.sqrt(np.einsum("ij,ij->i", c, c))))
    return c * (np.sqrt(a.shape[1]) / m) if m > 0 else c


def _store_dtype(a: np.ndarray, fmt: FloatFormat, float32_ok: bool) -> type[np.floating]:
    """float32 only where it loses nothing that matters: wide arrays (the k-NN kernel or the projection
    works in float32 there) from sources that had no more than float32 precision to begin with."""
    return np.float32 if float32_ok and a.shape[1] >= _FLOAT32_MIN_DIM and fmt.nmant <= 23 else np.float64


def prepare_pair(
    x: np.ndarray, xf: FloatFormat, y: np.ndarray, yf: FloatFormat, opts: Options, float32_ok: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """MI pipeline: dedup → standardise x and y separately (+ jitter) → shared projection → balance.

    ``float32_ok``: the caller computes in float32 anyway (KSG at d >= 64) or projects, so wide standardised
    arrays from float32/bf16/fp16 sources may be stored in float32 (half the memory traffic, no PCA copies).
    """
    if opts.dedup:
        keep = unique_rows(x, y)
        if keep is not None:
            x, y = x[keep], y[keep]
    sides = [(x, xf, column_stats(x, opts.mode), 1), (y, yf, column_stats(y, opts.mode), 2)]

    def standardize(side: tuple[np.ndarray, FloatFormat, Any, int]) -> np.ndarray:
        a, fmt, stats, stream = side
        rng = np.random.default_rng([opts.seed, stream])
        return standardize_and_jitter(a, fmt, opts, rng, _store_dtype(a, fmt, float32_ok), stats)

    zx, zy = _map(standardize, sides, x.size + y.size)  # own data and noise stream each: order-free
    if zx.shape[1] == zy.shape[1]:
        w = fit_basis([zx, zy], opts)
        if w is not None:
            zx, zy = project(zx, w), project(zy, w)
            if opts.mode != "none":
                zx, zy = balance(zx), balance(zy)
    else:  # no shared coordinates: each side gets its own basis
        wx, wy = fit_basis([zx], opts), fit_basis([zy], opts)
        zx = zx if wx is None else project(zx, wx)
        zy = zy if wy is None else project(zy, wy)
    return zx, zy


def prepare_single(x: np.ndarray, xf: FloatFormat, opts: Options) -> np.ndarray:
    """The entropy pipeline: dedup → (standardise) + jitter → projection."""
    if opts.dedup:
        keep = unique_rows(x)
        if keep is not None:
            x = x[keep]
    z = standardize_and_jitter(x, xf, opts, np.random.default_rng([opts.seed, 1]))
    w = fit_basis([z], opts)
    return z if w is None else project(z, w)
