"""Exact k-th nearest-neighbour radius in the plane under the max-norm, for many point sets at once.

``mi.perdim`` needs, for each of thousands of coordinate pairs (x_j, y_j), every point's distance to its k-th
nearest other point in the max-norm. A k-d tree per pair costs a build and a query per coordinate; this module
answers all pairs of a chunk with a few whole-array numpy operations and stays exact.

How (B points per strip, w slots per side):

* Sort each set by x and cut it into strips of B consecutive points. Merge each two neighbouring strips into
  a "pair" of 2B points and sort the pair by y. A point of strip s lies in pair (s-1, s) and in pair (s, s+1).
* In each y-sorted pair, every slot is compared with the w slots above and below it (whole-array shifts, no
  gathers) and keeps the k smallest max-norm distances (a min/max insertion network). In pair (s-1, s) a point
  of strip s only takes points of strip s-1 (the others are the same points pair (s, s+1) offers), so the two
  windows offer disjoint candidates; the k-th smallest of their union is a candidate radius r >= the true one.
* r is the true radius when no point outside the candidates can be closer than r: the points outside the
  windows of a pair lie beyond the first slot past each end of the window, so they are at least that slot's
  y-distance away, and the points outside strips s-1..s+1 are at least the x-distance to the nearest of them
  away. Both bounds are computed with the same float subtraction as the distances, which rounding keeps
  monotone in the sorted coordinate, so "bound >= r" is an exact certificate, not an approximation.
* The points without a certificate (about one in ten: sparse tails, windows too narrow) get an exact range
  query: every point within r in both coordinates (strips by x, then a binary search in y, with a margin
  that only adds points), and the (k+1)-th smallest distance to them, the point itself included.

Distances are max(|x_a - x_b|, |y_a - y_b|) in float64 exactly as a k-d tree or scikit-learn's
neighbour search compute them, so the radii are identical to theirs bit for bit.
"""

from __future__ import annotations

import numpy as np

STRIP = 128  # points per x-strip: wide enough that most k-NN squares stay within three strips
WINDOW = 12  # y-sorted slots compared on each side: most squares hold fewer points of a pair than this


def sort_by_x(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of (c, n) point sets sorted by x: (flat positions of the sorted points, xs, y in that order)."""
    c, n = x.shape
    flat = (np.argsort(x, axis=1) + np.arange(c)[:, None] * n).ravel()
    return flat, x.ravel()[flat].reshape(c, n), y.ravel()[flat].reshape(c, n)


def kth_chebyshev(x: np.ndarray, y: np.ndarray, k: int, strip: int = STRIP, window: int = WINDOW) -> np.ndarray:
    """(c, n) max-norm distance of every point of each row pair (x[i], y[i]) to its k-th nearest other point."""
    flat, xs, yx = sort_by_x(x, y)
    out = np.empty(x.size)
    out[flat] = kth_chebyshev_sorted(xs, yx, k, strip, window).ravel()
    return out.reshape(x.shape)


def kth_chebyshev_sorted(xs: np.ndarray, yx: np.ndarray, k: int, strip: int = STRIP,
                         window: int = WINDOW) -> np.ndarray:
    """As ``kth_chebyshev`` for rows already sorted by x (xs ascending, yx the y of the same points); the
    radii come back in that order."""
    c, n = xs.shape
    if n <= k:
        raise ValueError(f"need more than k={k} points per set, got {n}")
    b = 1 << (min(strip, n).bit_length() - 1)  # a power of two, for the branch-free binary search
    w = max(1, min(window, 2 * b - 1))
    s = -(-n // b)  # real strips; padded strip 0 holds -inf x, strip s+1 and the tail of strip s +inf
    xp = np.full((c, s + 2, b), np.inf)
    yp = np.full((c, s + 2, b), np.inf)
    xp[:, 0] = -np.inf
    xp[:, 1 : s + 1].reshape(c, -1)[:, :n] = xs
    yp[:, 1 : s + 1].reshape(c, -1)[:, :n] = yx
    pairs = _PairWindows(xp, yp, k, w)
    eps, gap = pairs.candidate_radius(n)
    strip_of = np.arange(n) // b + 1  # padded strip of each x-rank
    xe = np.concatenate([np.full((c, 1), -np.inf), xp.reshape(c, -1), np.full((c, 1), np.inf)], axis=1)
    with np.errstate(invalid="ignore"):
        xgap = np.minimum(xs - xe[:, (strip_of - 1) * b], xe[:, (strip_of + 2) * b + 1] - xs)
    ok = (eps <= np.minimum(gap, xgap)) & np.isfinite(eps)
    rows, ranks = np.nonzero(~ok)
    if rows.size:
        eps[rows, ranks] = _range_query(xs, yx, pairs.sorted_strips(), b, rows, ranks, eps[rows, ranks], k)
    return eps


class _PairWindows:
    """The y-sorted pairs of neighbouring x-strips, laid out as one flat array with w + 1 padding slots around
    every pair, so that shifting the whole array by o compares each slot with the one o places away in the
    same pair."""

    def __init__(self, xp: np.ndarray, yp: np.ndarray, k: int, w: int) -> None:
        c, s2, b = xp.shape
        self.c, self.nstrips, self.b, self.k, self.w = c, s2 - 2, b, k, w
        rows = c * (s2 - 1)
        py = np.concatenate([yp[:, :-1], yp[:, 1:]], axis=2)  # (c, s+1, 2b): pair t = strips t, t+1
        order = np.argsort(py, axis=2)
        src = order + (np.arange(s2 - 1) * b)[None, :, None] + (np.arange(c) * s2 * b)[:, None, None]
        self.order = order.reshape(rows, 2 * b)
        h = w + 1
        self.h, self.rows, self.width = h, rows, 2 * b + 2 * h
        qx = np.full((rows, self.width), np.inf)
        qy = np.full((rows, self.width), np.inf)
        qy[:, :h] = -np.inf  # y stays ascending along each pair, pads included
        pen = np.zeros((rows, self.width))
        qx[:, h : h + 2 * b] = xp.ravel()[src.reshape(rows, 2 * b)]
        qy[:, h : h + 2 * b] = yp.ravel()[src.reshape(rows, 2 * b)]
        second = (self.order >= b).astype(np.uint64) * np.uint64(0x7FF0000000000000)
        pen[:, h : h + 2 * b] = second.view(np.float64)  # +inf on the second strip of the pair, else 0
        self.qx, self.qy, self.pen = qx.ravel(), qy.ravel(), pen.ravel()

    def _nearest(self) -> np.ndarray:
        """(k, slots): the k smallest distances from each slot to the w slots on either side, ascending; a
        distance between two second-strip points is +inf (those points see each other in the next pair)."""
        qx, qy, pen, k = self.qx, self.qy, self.pen, self.k
        size = qx.size
        best = np.full((k, size), np.inf)
        d_buf, e_buf = np.empty(size), np.empty(size)
        with np.errstate(invalid="ignore"):  # pad against pad gives nan, never a real slot's distance
            for o in range(1, self.w + 1):
                d = np.subtract(qx[o:], qx[:-o], out=d_buf[: size - o])
                np.abs(d, out=d)
                e = np.subtract(qy[o:], qy[:-o], out=e_buf[: size - o])  # >= 0: y ascends along a pair
                np.maximum(d, e, out=d)
                np.minimum(pen[o:], pen[:-o], out=e)
                np.maximum(d, e, out=d)
                for lo, hi in ((0, size - o), (o, size)):  # d is a candidate of both slots it joins
                    for i in range(k - 1, 0, -1):
                        np.maximum(best[i - 1, lo:hi], d, out=e)
                        np.minimum(best[i, lo:hi], e, out=best[i, lo:hi])
                    np.minimum(best[0, lo:hi], d, out=best[0, lo:hi])
        return best

    def candidate_radius(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(c, n) in x-rank order: the k-th smallest distance over both windows of each point, and the smallest
        y-distance to a slot just outside either window."""
        b, h, w, k, rows, c, s = self.b, self.h, self.w, self.k, self.rows, self.c, self.nstrips
        best = self._nearest().reshape(k, rows, self.width)[:, :, h : h + 2 * b]
        qy = self.qy.reshape(rows, self.width)
        with np.errstate(invalid="ignore"):
            gap = np.minimum(qy[:, h : h + 2 * b] - qy[:, h - w - 1 : h + 2 * b - w - 1],
                             qy[:, h + w + 1 : h + 2 * b + w + 1] - qy[:, h : h + 2 * b])
        vals = np.concatenate([best, gap[None]]).reshape(k + 1, rows * 2 * b)
        unsorted = np.empty_like(vals)
        unsorted[:, (self.order + (np.arange(rows) * 2 * b)[:, None]).ravel()] = vals
        unsorted = unsorted.reshape(k + 1, c, s + 1, 2 * b)
        fwd = unsorted[:, :, 1:, :b].reshape(k + 1, c, -1)[:, :, :n]  # strip t as first strip of pair t
        bwd = unsorted[:, :, :s, b:].reshape(k + 1, c, -1)[:, :, :n]  # strip t as second strip of pair t-1
        eps = np.minimum(fwd[k - 1], bwd[k - 1])  # k-th smallest of two ascending k-lists
        for i in range(1, k):
            eps = np.minimum(eps, np.maximum(fwd[i - 1], bwd[k - i - 1]))
        return eps, np.minimum(fwd[k], bwd[k])

    def sorted_strips(self) -> tuple[np.ndarray, np.ndarray]:
        """(c, s+1, b) x and y of padded strips 0..s, each sorted by y (the first strips of the pairs)."""
        b, h = self.b, self.h
        first = self.order < b
        sx = self.qx.reshape(self.rows, self.width)[:, h : h + 2 * b][first]
        sy = self.qy.reshape(self.rows, self.width)[:, h : h + 2 * b][first]
        shape = (self.c, self.nstrips + 1, b)
        return sx.reshape(shape), sy.reshape(shape)


def _range_query(xs: np.ndarray, yx: np.ndarray, strips: tuple[np.ndarray, np.ndarray], b: int,
                 rows: np.ndarray, ranks: np.ndarray, bound: np.ndarray, k: int) -> np.ndarray:
    """Exact radius of the given points: the (k+1)-th smallest distance (the point itself at 0 included) to
    all points within ``bound`` (an upper bound of the radius) in both coordinates."""
    c, n = xs.shape
    sx, sy = strips
    nst = sx.shape[1]
    u = bound  # +inf (no finite candidate) makes every search span the whole set
    px, py = xs[rows, ranks], yx[rows, ranks]
    # margins that only widen the searches: every point with computed |dx| <= u lies inside [px -+ (u + mx)]
    mx = (np.abs(px) + u) * 2.0**-48 + 1e-300
    my = (np.abs(py) + u) * 2.0**-48 + 1e-300
    first = np.empty(rows.size, np.intp)
    last = np.empty(rows.size, np.intp)
    for r in np.unique(rows):  # rows come sorted from np.nonzero
        sel = slice(*np.searchsorted(rows, [r, r + 1]))
        first[sel] = np.searchsorted(xs[r], px[sel] - u[sel] - mx[sel], side="left")
        last[sel] = np.searchsorted(xs[r], px[sel] + u[sel] + mx[sel], side="right")
    first = first // b + 1  # padded strips first..last hold every point within u in x
    last = np.maximum(last - 1, 0) // b + 1
    per = last - first + 1
    owner = np.repeat(np.arange(rows.size), per)
    strip = first[owner] + np.arange(owner.size) - np.repeat(np.cumsum(per) - per, per)
    base = (rows[owner] * nst + strip) * b
    m = owner.size
    both = _bisect(sy.ravel(), np.concatenate([base, base]), b,
                   np.concatenate([py[owner] - u[owner] - my[owner], py[owner] + u[owner] + my[owner]]))
    lo = both[:m]
    cnt = both[m:] - lo
    pid = np.repeat(owner, cnt)
    idx = np.repeat(base + lo, cnt) + np.arange(pid.size) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    d = np.maximum(np.abs(sx.ravel()[idx] - px[pid]), np.abs(sy.ravel()[idx] - py[pid]))
    tot = np.bincount(owner, weights=cnt, minlength=rows.size).astype(np.intp)
    return _kth_per_group(d, pid, np.cumsum(tot) - tot, k + 1)


def _bisect(flat: np.ndarray, base: np.ndarray, b: int, key: np.ndarray) -> np.ndarray:
    """Per query, #{values < key} in the sorted run flat[base : base + b], b a power of two (numpy's
    searchsorted, side "left", vectorised over many runs): branch-free halving steps."""
    at = base.copy()
    step = b // 2
    while step:
        at += np.where(flat[at + (step - 1)] < key, step, 0)
        step //= 2
    at += flat[at] < key
    return at - base


def _kth_per_group(d: np.ndarray, group: np.ndarray, starts: np.ndarray, m: int) -> np.ndarray:
    """The m-th smallest value of each group (groups contiguous in ``group`` and starting at ``starts``, each
    holding at least m values): m rounds of removing the group minimum, ties counted with their multiplicity
    (d is overwritten)."""
    ngroups = starts.size
    need = np.full(ngroups, m)
    out = np.full(ngroups, np.nan)
    for _ in range(m):
        low = np.minimum.reduceat(d, starts)
        eq = d == low[group]
        cnt = np.add.reduceat(eq, starts)
        hit = np.isnan(out) & (cnt >= need)
        out[hit] = low[hit]
        if not np.isnan(out).any():
            break
        need -= cnt
        d[eq] = np.inf
    return out
