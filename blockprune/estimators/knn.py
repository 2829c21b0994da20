"""Exact k-nearest-neighbour statistics for the k-NN estimators, with interchangeable backends.

Two primitives: ``kth_distance`` (KL entropy) and ``ksg_counts`` (KSG mutual information). Backends:

* ``"numpy"`` – blocked brute force. A block of rows is compared with all N rows; squared Euclidean
  distances ``|a|^2 + |b|^2 - 2 a.b`` come from one BLAS gemm on augmented rows. The data are centred in
  float64 before any cast, so a large common offset cannot cancel catastrophically. Only a
  ``block_size x N`` slab exists at a time. Row blocks run on ``n_threads`` threads, each with
  single-threaded BLAS, so every row is computed the same way whatever the thread count.
* ``"torch"`` – the same algorithm with torch on CPU or CUDA (TF32 is switched off for the call).
* ``"tree"`` – scipy ``cKDTree``; exact and fastest when the (joint) dimension is small.
* ``"auto"`` – tree for low dimension where the norm allows it, else torch on CUDA when available,
  else numpy.

KSG needs, per point, the k-th neighbour distance eps in the joint norm max(|dx|, |dy|), then the number
of marginal neighbours strictly inside eps (variant 1) or within the marginal extent of the k neighbours
(variant 2). All three numbers for a row are taken from the same computed distances, so the neighbour
that defines eps is never miscounted by rounding.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from ._threads import blas_threads, default_threads
from ._validate import check_choice

Norm = Literal["euclidean", "chebyshev"]
Backend = Literal["auto", "numpy", "torch", "tree"]
Precision = Literal["auto", "float32", "float64"]

_BLOCK_ELEMS = 1 << 22  # elements of one N-wide slab; 16-32 MiB, cache- and memory-friendly
_TREE_MAX_DIM = 8
_FLOAT32_MIN_DIM = 64  # below this float64 costs little and keeps low-d distances exact


# ----------------------------------------------------------------------------- configuration helpers
def _torch() -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a project dependency
        return None
    return torch


def _cuda_available() -> bool:
    t = _torch()
    return bool(t is not None and t.cuda.is_available())


def choose_backend(backend: str, dims: tuple[int, ...], norm: str, device: str | None = None) -> str:
    """Resolve ``"auto"``; reject combinations a backend cannot compute exactly."""
    check_choice(backend, "backend", ("auto", "numpy", "torch", "tree"))
    check_choice(norm, "norm", ("euclidean", "chebyshev"))
    tree_ok = len(dims) == 1 or norm == "chebyshev" or all(d == 1 for d in dims)
    if backend == "tree" and not tree_ok:
        raise ValueError(
            "backend='tree' computes the joint max(|dx|,|dy|) norm only for norm='chebyshev' or 1-D "
            "marginals; use backend='numpy'/'torch' for euclidean marginals"
        )
    if backend == "torch" and _torch() is None:
        raise ValueError("backend='torch' needs torch installed")
    if backend != "auto":
        return backend
    if tree_ok and sum(dims) <= _TREE_MAX_DIM and not (device or "").startswith("cuda"):
        return "tree"
    if (device or "").startswith("cuda") or (device is None and _cuda_available()):
        return "torch"
    return "numpy"


def check_engine_options(
    backend: str, precision: str, block_size: int | None, norm: str = "euclidean"
) -> None:
    """Fail on a bad engine option before any preprocessing or distance work starts."""
    check_choice(backend, "backend", ("auto", "numpy", "torch", "tree"))
    check_choice(precision, "precision", ("auto", "float32", "float64"))
    check_choice(norm, "norm", ("euclidean", "chebyshev"))
    block_rows(1, block_size, 1)


def resolve_precision(precision: str, dims: tuple[int, ...], norm: str) -> type[np.floating]:
    check_choice(precision, "precision", ("auto", "float32", "float64"))
    if precision == "auto":
        use32 = norm == "euclidean" and max(dims) >= _FLOAT32_MIN_DIM
        return np.float32 if use32 else np.float64
    return np.float32 if precision == "float32" else np.float64


def block_rows(n: int, block_size: int | None, n_threads: int) -> int:
    """Rows per slab: bounded by memory, and small enough that every thread gets work."""
    if block_size is not None:
        if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer; got {block_size!r}")
        return int(min(block_size, n))
    rows = max(16, _BLOCK_ELEMS // max(n, 1))
    if n_threads > 1:
        rows = min(rows, max(16, -(-n // (4 * n_threads))))
    return int(min(rows, n))


def _centred(a: np.ndarray, dtype: type[np.floating]) -> np.ndarray:
    """Centre in float64 (removes any large offset exactly enough) before casting to the compute dtype."""
    a64 = np.asarray(a, dtype=np.float64)
    return np.ascontiguousarray(a64 - a64.mean(axis=0), dtype=dtype)


# ----------------------------------------------------------------------------- numpy brute force
class _NumpyMetric:
    """Squared Euclidean (via gemm) or Chebyshev distances from a block of rows to all rows."""

    def __init__(self, a: np.ndarray, norm: str, dtype: type[np.floating]) -> None:
        self.a = _centred(a, dtype)
        self.norm = norm
        if norm == "euclidean":
            # [a, |a|^2, 1] . [-2b, 1, |b|^2] = |a - b|^2: one matmul yields the whole distance slab, with
            # no extra passes over it. numpy's matmul releases the GIL (scipy's blas.sgemm does not), so
            # the row-block threads really run in parallel.
            sq = np.einsum("ij,ij->i", self.a, self.a)[:, None]
            one = np.ones_like(sq)
            self.left = np.hstack([self.a, sq, one])
            self.right_t = np.hstack([-2.0 * self.a, one, sq]).T

    def block(self, s: int, e: int, out: np.ndarray) -> np.ndarray:
        a = self.a
        if self.norm == "euclidean":
            np.matmul(self.left[s:e], self.right_t, out=out)
        else:
            tmp = np.empty_like(out)
            np.subtract(a[s:e, 0, None], a[None, :, 0], out=out)
            np.abs(out, out=out)
            for j in range(1, a.shape[1]):
                np.subtract(a[s:e, j, None], a[None, :, j], out=tmp)
                np.abs(tmp, out=tmp)
                np.maximum(out, tmp, out=out)
        r = np.arange(e - s)
        out[r, s + r] = np.inf  # a point is not its own neighbour
        return out


def _run_blocks(n: int, rows: int, n_threads: int, work: Callable[[int, int], None]) -> None:
    starts = list(range(0, n, rows))
    with blas_threads(1 if n_threads > 1 else n_threads):
        if n_threads == 1 or len(starts) == 1:
            for s in starts:
                work(s, min(s + rows, n))
        else:
            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                list(pool.map(lambda s: work(s, min(s + rows, n)), starts))


class _Buffers(threading.local):
    """Per-thread scratch slabs, reused across blocks: fresh 32 MiB arrays per block cost page faults."""

    def get(self, name: str, shape: tuple[int, int], dtype: Any) -> np.ndarray:
        buf = getattr(self, name, None)
        if buf is None or buf.shape[1] != shape[1] or buf.shape[0] < shape[0] or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            setattr(self, name, buf)
        return buf[: shape[0]]


def _numpy_kth(a: np.ndarray, k: int, norm: str, dtype: type, rows: int, n_threads: int) -> np.ndarray:
    n = a.shape[0]
    metric = _NumpyMetric(a, norm, dtype)
    out = np.empty(n, dtype=np.float64)
    bufs = _Buffers()

    def work(s: int, e: int) -> None:
        d = metric.block(s, e, bufs.get("d", (e - s, n), dtype))
        d.partition(k - 1, axis=1)
        out[s:e] = d[:, k - 1]

    _run_blocks(n, rows, n_threads, work)
    return out


def _numpy_ksg(
    x: np.ndarray, y: np.ndarray, k: int, variant: int, norm: str, dtype: type, rows: int, n_threads: int
) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    mx, my = _NumpyMetric(x, norm, dtype), _NumpyMetric(y, norm, dtype)
    nx, ny = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    bufs = _Buffers()

    def work(s: int, e: int) -> None:
        shape = (e - s, n)
        dx = mx.block(s, e, bufs.get("dx", shape, dtype))
        dy = my.block(s, e, bufs.get("dy", shape, dtype))
        joint = np.maximum(dx, dy, out=bufs.get("joint", shape, dtype))
        mask = bufs.get("mask", shape, np.bool_)
        if variant == 1:
            joint.partition(k - 1, axis=1)
            eps = joint[:, k - 1, None]
            nx[s:e] = np.count_nonzero(np.less(dx, eps, out=mask), axis=1)
            ny[s:e] = np.count_nonzero(np.less(dy, eps, out=mask), axis=1)
        else:
            idx = np.argpartition(joint, k - 1, axis=1)[:, :k]
            ex = np.take_along_axis(dx, idx, axis=1).max(axis=1)[:, None]
            ey = np.take_along_axis(dy, idx, axis=1).max(axis=1)[:, None]
            nx[s:e] = np.count_nonzero(np.less_equal(dx, ex, out=mask), axis=1)
            ny[s:e] = np.count_nonzero(np.less_equal(dy, ey, out=mask), axis=1)

    _run_blocks(n, rows, n_threads, work)
    return nx, ny


# ----------------------------------------------------------------------------- torch brute force
@contextlib.contextmanager
def exact_fp32_matmul() -> Iterator[None]:
    """Switch TF32 off for CUDA matmuls (10-bit mantissa products would wreck |a|^2+|b|^2-2ab), restore after.

    Uses the ``fp32_precision`` API where torch has it: reading the legacy ``allow_tf32`` flag raises once
    anything in the process has used the new API.
    """
    mm = _torch().backends.cuda.matmul
    new_api = hasattr(mm, "fp32_precision")
    old = mm.fp32_precision if new_api else mm.allow_tf32
    try:
        if new_api:
            mm.fp32_precision = "ieee"
        else:  # pragma: no cover - older torch
            mm.allow_tf32 = False
        yield
    finally:
        if new_api:
            mm.fp32_precision = old
        else:  # pragma: no cover - older torch
            mm.allow_tf32 = old


@contextlib.contextmanager
def _torch_session(n_threads: int | None, device: Any) -> Iterator[None]:
    """Exact fp32 matmuls on CUDA and an optional CPU thread count, both restored afterwards."""
    torch = _torch()
    old_threads = torch.get_num_threads()
    try:
        if n_threads is not None:
            torch.set_num_threads(n_threads)
        with exact_fp32_matmul() if device.type == "cuda" else contextlib.nullcontext():
            yield
    finally:
        torch.set_num_threads(old_threads)


class _TorchMetric:
    def __init__(self, a: np.ndarray, norm: str, dtype: type, device: Any) -> None:
        torch = _torch()
        self.torch = torch
        tdtype = torch.float32 if dtype == np.float32 else torch.float64
        self.a = torch.from_numpy(_centred(a, dtype)).to(device=device, dtype=tdtype)
        self.sq = (self.a * self.a).sum(dim=1)
        self.norm = norm

    def block(self, s: int, e: int) -> Any:
        torch, a = self.torch, self.a
        if self.norm == "euclidean":
            out = torch.addmm(self.sq[None, :], a[s:e], a.T, beta=1.0, alpha=-2.0)
            out += self.sq[s:e, None]
        else:
            out = torch.cdist(a[s:e], a, p=float("inf"))
        r = torch.arange(e - s, device=a.device)
        out[r, s + r] = float("inf")
        return out


def _kth_smallest(t: Any, k: int) -> Any:
    """k-th smallest per row; topk is several times faster than kthvalue on CPU and exact as well."""
    return _torch().topk(t, k, dim=1, largest=False, sorted=True).values[:, k - 1]


def _torch_device(device: str | None) -> Any:
    torch = _torch()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _torch_kth(a: np.ndarray, k: int, norm: str, dtype: type, rows: int, device: str | None,
               n_threads: int | None) -> np.ndarray:
    dev = _torch_device(device)
    with _torch_session(n_threads, dev):
        m = _TorchMetric(a, norm, dtype, dev)
        n = a.shape[0]
        parts = [_kth_smallest(m.block(s, min(s + rows, n)), k) for s in range(0, n, rows)]
        return m.torch.cat(parts).double().cpu().numpy()


def _torch_ksg(x: np.ndarray, y: np.ndarray, k: int, variant: int, norm: str, dtype: type, rows: int,
               device: str | None, n_threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    dev = _torch_device(device)
    with _torch_session(n_threads, dev):
        mx, my = _TorchMetric(x, norm, dtype, dev), _TorchMetric(y, norm, dtype, dev)
        torch, n = mx.torch, x.shape[0]
        cx, cy = [], []
        for s in range(0, n, rows):
            e = min(s + rows, n)
            dx, dy = mx.block(s, e), my.block(s, e)
            joint = torch.maximum(dx, dy)
            if variant == 1:
                eps = _kth_smallest(joint, k)[:, None]
                cx.append((dx < eps).sum(dim=1))
                cy.append((dy < eps).sum(dim=1))
            else:
                idx = torch.topk(joint, k, dim=1, largest=False).indices
                ex = dx.gather(1, idx).amax(dim=1, keepdim=True)
                ey = dy.gather(1, idx).amax(dim=1, keepdim=True)
                cx.append((dx <= ex).sum(dim=1))
                cy.append((dy <= ey).sum(dim=1))
        return torch.cat(cx).cpu().numpy().astype(np.int64), torch.cat(cy).cpu().numpy().astype(np.int64)


# ----------------------------------------------------------------------------- cKDTree
def _tree_kth(a: np.ndarray, k: int, norm: str, n_threads: int) -> np.ndarray:
    from scipy.spatial import cKDTree

    a = _centred(a, np.float64)
    pnorm = 2.0 if norm == "euclidean" else np.inf
    dist, _ = cKDTree(a).query(a, k=k + 1, p=pnorm, workers=n_threads)
    return dist[:, k]  # column 0 is the point itself (or an exact duplicate at distance 0)


def tree_ksg_counts(
    x: np.ndarray, y: np.ndarray, k: int, variant: int = 1, n_threads: int = 1,
    query: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """KSG counts with cKDTree in the Chebyshev (max) norm, optionally for a subset of query rows only."""
    from scipy.spatial import cKDTree

    x, y = _centred(x, np.float64), _centred(y, np.float64)
    q = np.arange(x.shape[0]) if query is None else np.asarray(query)
    joint = np.hstack([x, y])
    dist, idx = cKDTree(joint).query(joint[q], k=k + 1, p=np.inf, workers=n_threads)
    tx, ty = cKDTree(x), cKDTree(y)
    if variant == 1:
        eps = dist[:, k]
        r = np.nextafter(eps, 0.0)  # strictly inside: |d| are exact, so this excludes the eps neighbour
        nx = tx.query_ball_point(x[q], r, p=np.inf, return_length=True, workers=n_threads) - 1
        ny = ty.query_ball_point(y[q], r, p=np.inf, return_length=True, workers=n_threads) - 1
        zero = eps == 0  # exact joint duplicates: nothing is strictly closer, as in the brute backends
        nx[zero], ny[zero] = 0, 0
        return nx.astype(np.int64), ny.astype(np.int64)
    # variant 2: the k neighbours without the point itself (it may not sit in column 0 if duplicated)
    is_self = idx == q[:, None]
    drop = np.where(is_self.any(axis=1), np.argmax(is_self, axis=1), k)
    keep = np.ones_like(idx, dtype=bool)
    keep[np.arange(len(q)), drop] = False
    nb = idx[keep].reshape(len(q), k)
    ex = np.abs(x[nb] - x[q][:, None, :]).max(axis=(1, 2))
    ey = np.abs(y[nb] - y[q][:, None, :]).max(axis=(1, 2))
    nx = tx.query_ball_point(x[q], ex, p=np.inf, return_length=True, workers=n_threads) - 1
    ny = ty.query_ball_point(y[q], ey, p=np.inf, return_length=True, workers=n_threads) - 1
    return nx.astype(np.int64), ny.astype(np.int64)


# ----------------------------------------------------------------------------- public entry points
def kth_distance(
    a: np.ndarray, k: int, *, norm: Norm = "euclidean", backend: Backend = "auto", device: str | None = None,
    block_size: int | None = None, n_threads: int | None = None, precision: Precision = "auto",
) -> np.ndarray:
    """Distance from each row to its k-th nearest other row (float64, length N)."""
    dims = (a.shape[1],)
    be = choose_backend(backend, dims, norm, device)
    threads = default_threads() if n_threads is None else int(n_threads)
    if be == "tree":
        return _tree_kth(a, k, norm, threads)
    dtype = resolve_precision(precision, dims, norm)
    rows = block_rows(a.shape[0], block_size, threads if be == "numpy" else 1)
    if be == "torch":
        v = _torch_kth(a, k, norm, dtype, rows, device, n_threads)
    else:
        v = _numpy_kth(a, k, norm, dtype, rows, threads)
    v = v.astype(np.float64)
    return np.sqrt(np.maximum(v, 0.0)) if norm == "euclidean" else v


def ksg_counts(
    x: np.ndarray, y: np.ndarray, k: int, *, variant: int = 1, norm: Norm = "euclidean",
    backend: Backend = "auto", device: str | None = None, block_size: int | None = None,
    n_threads: int | None = None, precision: Precision = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Marginal neighbour counts n_x, n_y of the KSG estimator (variant 1: strictly inside eps)."""
    check_choice(variant, "variant", (1, 2))
    dims = (x.shape[1], y.shape[1])
    be = choose_backend(backend, dims, norm, device)
    threads = default_threads() if n_threads is None else int(n_threads)
    if be == "tree":  # 1-D marginals: |dx| is both the euclidean and the chebyshev distance
        return tree_ksg_counts(x, y, k, variant, threads)
    dtype = resolve_precision(precision, dims, norm)
    rows = block_rows(x.shape[0], block_size, threads if be == "numpy" else 1)
    if be == "torch":
        return _torch_ksg(x, y, k, variant, norm, dtype, rows, device, n_threads)
    return _numpy_ksg(x, y, k, variant, norm, dtype, rows, threads)
