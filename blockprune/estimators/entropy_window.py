"""EntroDrop's entropy estimators as its released code computes them, scored one calibration window at a time.

The official code (github.com/SalesforceAIResearch/EntroDrop; facts and line numbers in
docs/REFERENCE-METHODS.md) feeds one 256-token window per forward pass and estimates the entropy of that
window's hidden states, ``(1, seq_len, d)`` flattened to ``n = seq_len`` rows, at the input and output of
every block; the block's score is the entropy increase averaged over windows. These estimators are
registered with ``pooling="window"``: the scorer (``blockprune.calibration.scoring``) calls them on the rows
of each window separately and averages, so ``H(boundary)`` is a mean over windows and
``ΔH = mean_w H_w(y) - mean_w H_w(x)`` is the official per-window ΔH averaged.

=====================  ===================================================================================
entropy.knn_window     Kozachenko-Leonenko with the official constants: d <log(r_k + 1e-10)> + d/2 log π
                       - log Γ(d/2 + 1) + log n - log k, k = 25, Euclidean, no de-duplication (a repeated
                       token's embedding rows sit at distance 0 and only the 1e-10 floor keeps the log
                       finite, as in the official code).
entropy.bucket_window  ``entropy.bucket`` with 20 bins over each window's own per-dimension min..max
                       (the Llama file's default; the Mistral file uses 80), summed over dimensions.
entropy.renyi_window   Each dimension z-scored within the window (std with ddof 1, + 1e-10), Gaussian kernel
                       K = exp(-D² / 2σ²) with σ the lower median of the full n x n distance matrix
                       (diagonal zeros included), K floored at 1e-10, H = log(mean K^(α-1)) / (1 - α),
                       α = 4. This is the Parzen "information potential" form of Rényi's entropy, not the
                       matrix-based (eigenvalue) form of ``entropy.renyi``.
=====================  ===================================================================================

The official functions run in the model's dtype on the GPU (float16 in its main.py; the KNN one casts to
float32); these compute in float64 on the stored rows.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import gammaln

from . import knn as _knn
from ._registry import register
from ._validate import as_float_array, check_k, only_x
from .entropy import bucket
from .knn import Backend

_FLOOR = 1e-10  # the official code's guard inside log(r) and on the kernel values


@register("entropy.knn_window", "entropy", pooling="window",
          label="KNN per window", description="KNN, per window (EntroDrop code: k = 25, log n - log k)")
def knn_window(x: Any, y: Any = None, *, k: int = 25, backend: Backend = "auto", n_threads: int | None = None,
               ) -> float:
    """Kozachenko-Leonenko entropy with the constants of EntroDrop's released code (see module docstring)."""
    only_x(y, "entropy.knn_window")
    a, _ = as_float_array(x, "x")
    n, d = a.shape
    check_k(n, k)
    r = _knn.kth_distance(np.asarray(a, dtype=np.float64), k, backend=backend, n_threads=n_threads,
                          precision="float64")
    log_ball = 0.5 * d * math.log(math.pi) - float(gammaln(0.5 * d + 1.0))
    return float(d * np.mean(np.log(r + _FLOOR)) + log_ball + math.log(n) - math.log(k))


register("entropy.bucket_window", "entropy", pooling="window",
         label="bucket per window",
         description="bucket, per window (EntroDrop code: 20 bins over each window's min..max)", bins=20)(bucket)


def lower_median(values: np.ndarray) -> float:
    """The lower of the two middle values for an even count (torch.median's convention), else the middle."""
    flat = np.ravel(values)
    m = (flat.size - 1) // 2
    return float(np.partition(flat, m)[m])


@register("entropy.renyi_window", "entropy", pooling="window",
          label="Rényi per window",
          description="Rényi α = 4, per window (EntroDrop code: z-score, median σ, mean K^(α-1))")
def renyi_window(x: Any, y: Any = None, *, alpha: float = 4.0) -> float:
    """Rényi entropy in EntroDrop's released form (see module docstring); ``alpha = 1`` is its row-normalised
    Shannon branch, -Σ p log(p + 1e-10) / n with p = K / (row sum + 1e-10)."""
    only_x(y, "entropy.renyi_window")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ValueError(f"alpha must be a number > 0; got {alpha!r}")
    a, _ = as_float_array(x, "x")
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"entropy.renyi_window needs at least 2 rows in a window, got {n}")
    z = np.asarray(a, dtype=np.float64)
    z = (z - z.mean(axis=0)) / (z.std(axis=0, ddof=1) + _FLOOR)
    sq = np.einsum("ij,ij->i", z, z)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    np.fill_diagonal(d2, 0.0)
    sigma = lower_median(np.sqrt(d2))
    if not sigma > 0:
        raise ValueError("entropy.renyi_window: the median pairwise distance is 0 (most rows identical), so "
                         "the kernel bandwidth is undefined")
    kern = np.maximum(np.exp(-d2 / (2.0 * sigma**2)), _FLOOR)
    if alpha == 1:
        p = kern / (kern.sum(axis=1, keepdims=True) + _FLOOR)
        return float(-np.sum(p * np.log(p + _FLOOR)) / n)
    mean = max(float(np.mean(kern ** (alpha - 1.0))), _FLOOR)
    return float(math.log(mean) / (1.0 - alpha))
