"""Per-coordinate mutual information: the mean over hidden dimensions j of a 1-D MI I(x[:, j]; y[:, j]).

This is the reading of MI-PRUN that reproduces the magnitudes the paper reports (single blocks of a
4096-wide model around 0.4-1.3 nats): each coordinate of the residual stream is paired with the same
coordinate one block later, its MI estimated with the 1-D KSG estimator exactly as scikit-learn's
``mutual_info_regression`` computes it, and the values are averaged. It is a different quantity from the
multivariate ``mi.ksg`` (the MI of whole d-dimensional states, which for near-identical residual states is
far larger): see docs/REFERENCE-METHODS.md.

scikit-learn's definition, reproduced here (sklearn/feature_selection/_mutual_info.py):

* each column of x and of y is divided by its standard deviation (ddof 0, no centring; a constant column is
  left as it is) and gets ``1e-10 * max(1, mean |column|)`` times standard-normal noise (ties broken);
* eps_i is the distance to the k-th nearest other point of (x_j, y_j) in the max-norm; n_x(i) counts the
  other points with |x_j - x_i| <= nextafter(eps_i, 0), i.e. strictly inside eps_i, and n_y likewise;
* I = ψ(N) + ψ(k) - <ψ(n_x + 1)> - <ψ(n_y + 1)>, clipped at 0.

The noise is drawn from a seeded stream per column, so results are reproducible and independent of the
thread count. scikit-learn draws its noise from one global stream, so on data with exact ties (fp16 stores)
the two agree in distribution, not bit for bit; on continuous data the noise moves no count and they agree
to rounding.

Speed, and why it stays exact: the k-th neighbour radius of every point comes from
``_chebyshev2d.kth_chebyshev_sorted``, which answers a chunk of coordinates with whole-array numpy operations
(x-strips, y-sorted pairs of strips, fixed windows of neighbours) and certifies each radius: a radius is
accepted only where the float distance bounds show that no point outside the windows can be closer; the
rest (about one point in ten) get an exact range query. Distances are the same float64 max(|dx|, |dy|) a k-d tree or
scikit-learn computes, so the radii are bit-identical (tests/estimators/test_chebyshev2d.py checks them
against scipy's k-d tree, ties and tiny sets included). The marginal counts come from the sorted columns
(binary search plus an exact walk past values within rounding of the boundary, all columns of a chunk at
once) and ψ of the integer counts from one table. Chunks run on a thread pool (numpy releases the GIL in
its array loops); the noise streams are per column, so the thread count and chunking never change a value.
See benchmarks/bench_mi_perdim.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from scipy.special import digamma

from ._chebyshev2d import kth_chebyshev_sorted, sort_by_x
from ._registry import register
from ._threads import default_threads
from ._validate import as_pair, check_k

_CHUNK = 8  # coordinates per task: enough to amortise numpy's per-call cost, small enough to stay in cache


def scale_like_sklearn(a: np.ndarray, noise: float, seed: int, first_col: int, stream: int) -> np.ndarray:
    """(n, c) columns → (c, n) float64 scaled by their std (ddof 0; a zero std left as 1) plus tie-breaking
    noise of ``noise * max(1, mean |column|)`` standard deviations, each column from its own seeded stream."""
    z = np.array(a, dtype=np.float64, order="F", copy=True).T  # (c, n), each column contiguous
    std = z.std(axis=1)
    z /= np.where(std > 0, std, 1.0)[:, None]
    if noise > 0:
        amp = noise * np.maximum(1.0, np.mean(np.abs(z), axis=1))
        for i in range(z.shape[0]):
            rng = np.random.default_rng([seed, stream, first_col + i])
            z[i] += amp[i] * rng.standard_normal(z.shape[1])
    return np.ascontiguousarray(z)


def count_within(s: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(c, m) #{j: |s[i, j] - q[i, l]| <= r[i, l]} for rows s[i] sorted ascending, with each difference rounded
    as it is computed, so the point that defines r is never miscounted by the rounding of q ± r.

    hi = #{j: s_j - q <= r} and lo = #{j: q - s_j > r}; both predicates are monotone along a sorted row
    (rounding is monotone), so a binary search for q ± r lands within a few places and a short walk, done for
    all rows at once, makes it exact."""
    c, n = s.shape
    hi = np.empty(q.shape, dtype=np.intp)
    lo = np.empty(q.shape, dtype=np.intp)
    for i in range(c):
        hi[i] = np.searchsorted(s[i], q[i] + r[i], side="right")
        lo[i] = np.searchsorted(s[i], q[i] - r[i], side="left")
    flat = s.ravel()
    base = (np.arange(c) * n)[:, None]
    while (m := (hi > 0) & (flat[base + np.maximum(hi - 1, 0)] - q > r)).any():
        hi -= m
    while (m := (hi < n) & (flat[base + np.minimum(hi, n - 1)] - q <= r)).any():
        hi += m
    while (m := (lo < n) & (q - flat[base + np.minimum(lo, n - 1)] > r)).any():
        lo += m
    while (m := (lo > 0) & (q - flat[base + np.maximum(lo - 1, 0)] <= r)).any():
        lo -= m
    return hi - lo


def ksg_1d_columns(x: np.ndarray, y: np.ndarray, k: int = 3) -> np.ndarray:
    """KSG (algorithm 1, max-norm) of each row pair of already scaled (c, n) arrays, clipped at 0."""
    c, n = x.shape
    flat, xs, yx = sort_by_x(x, y)
    eps_x = kth_chebyshev_sorted(xs, yx, k)  # in x order
    r_x = np.nextafter(eps_x, 0.0)  # counts of |d| <= r are the counts strictly inside eps
    r = np.empty(x.size)
    r[flat] = r_x.ravel()
    psi = digamma(np.arange(1, n + 1, dtype=np.float64))  # ψ(1..n): the counts are integers
    inside_x = count_within(xs, xs, r_x)  # the point itself included: n_x + 1
    oy = (np.argsort(y, axis=1) + np.arange(c)[:, None] * n).ravel()  # queries in sorted order: searches walk forwards
    ys = y.ravel()[oy].reshape(c, n)
    inside_y = count_within(ys, ys, r[oy].reshape(c, n))
    total = psi[inside_x - 1].mean(axis=1) + psi[inside_y - 1].mean(axis=1)
    return np.maximum(psi[n - 1] + psi[k - 1] - total, 0.0)


def _check(x: Any, y: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    xa, _, ya, _ = as_pair(x, y, what)
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(f"{what} pairs coordinate j of x with coordinate j of y, so both need the same "
                         f"width; got {xa.shape[1]} and {ya.shape[1]}")
    return xa, ya


def perdim_values(x: Any, y: Any, *, k: int = 3, noise: float = 1e-10, seed: int = 0,
                  n_threads: int | None = None) -> np.ndarray:
    """The 1-D KSG MI of every coordinate pair (x[:, j], y[:, j]), in nats (the values ``mi.perdim``
    averages)."""
    xa, ya = _check(x, y, "mi.perdim")
    check_k(xa.shape[0], k)
    if not (isinstance(noise, int | float) and noise >= 0):
        raise ValueError(f"noise must be a number >= 0; got {noise!r}")
    d = xa.shape[1]
    chunks = [(s, min(s + _CHUNK, d)) for s in range(0, d, _CHUNK)]

    def one(chunk: tuple[int, int]) -> np.ndarray:
        s, e = chunk
        zx = scale_like_sklearn(xa[:, s:e], noise, seed, s, 1)
        zy = scale_like_sklearn(ya[:, s:e], noise, seed, s, 2)
        return ksg_1d_columns(zx, zy, k)

    threads = max(1, min(len(chunks), default_threads() if n_threads is None else int(n_threads)))
    if threads == 1:
        parts = [one(ch) for ch in chunks]
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(pool.map(one, chunks))
    return np.concatenate(parts)


@register("mi.perdim", "mi", label="per-coordinate KSG",
          description="per-coordinate KSG (MI-PRUN reading, scikit-learn's estimator)")
def perdim(x: Any, y: Any = None, *, k: int = 3, noise: float = 1e-10, seed: int = 0,
           n_threads: int | None = None) -> float:
    """Mean over coordinates j of scikit-learn's 1-D KSG MI I(x[:, j]; y[:, j]) (k neighbours, max-norm,
    strict marginal counts, clipped at 0, each column scaled by its std). See the module docstring."""
    return float(np.mean(perdim_values(x, y, k=k, noise=noise, seed=seed, n_threads=n_threads)))


@register("mi.perdim_gaussian", "mi", label="per-coordinate Gaussian",
          description="per-coordinate Gaussian -½ log(1-ρ²) (cheap proxy of mi.perdim)")
def perdim_gaussian(x: Any, y: Any = None) -> float:
    """Mean over coordinates of -½ log(1 - ρ_j²), ρ_j the Pearson correlation of x[:, j] and y[:, j]: the
    exact per-coordinate MI for jointly Gaussian pairs, and a cheap proxy of ``mi.perdim`` otherwise.
    A constant column has no correlation (counts 0); a perfectly correlated one gives inf."""
    xa, ya = _check(x, y, "mi.perdim_gaussian")
    n = xa.shape[0]
    if n < 3:
        raise ValueError(f"mi.perdim_gaussian needs at least 3 rows, got {n}")
    total = 0.0
    for s in range(0, xa.shape[1], 256):
        a = xa[:, s : s + 256].astype(np.float64)
        b = ya[:, s : s + 256].astype(np.float64)
        a = a - a.mean(axis=0)
        b = b - b.mean(axis=0)
        den = np.sqrt(np.einsum("ij,ij->j", a, a) * np.einsum("ij,ij->j", b, b))
        rho = np.where(den > 0, np.einsum("ij,ij->j", a, b) / np.where(den > 0, den, 1.0), 0.0)
        rho2 = np.minimum(rho * rho, 1.0)
        with np.errstate(divide="ignore"):
            total += float(np.sum(-0.5 * np.log1p(-rho2)))
    return total / xa.shape[1]
