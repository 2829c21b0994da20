"""Per-token similarity scores of a block's input x and output y (ShortGPT BI, angular, relative magnitude).

These average over tokens and need no neighbours, so they stream over row chunks in float64 and never
hold a float64 copy of the whole array (a bf16 (8192, 5120) input stays cheap).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._registry import register
from ._validate import as_pair

_CHUNK = 4096
_TINY = 1e-300


def _per_token(x: Any, y: Any, what: str, fn: Any) -> float:
    xa, _, ya, _ = as_pair(x, y, what)
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(f"{what} needs x and y of the same width d; got {xa.shape[1]} and {ya.shape[1]}")
    total = 0.0
    for s in range(0, xa.shape[0], _CHUNK):
        a = xa[s : s + _CHUNK].astype(np.float64)
        b = ya[s : s + _CHUNK].astype(np.float64)
        total += float(np.sum(fn(a, b)))
    return total / xa.shape[0]


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row; a zero vector has cosine 0 with anything (no direction)."""
    den = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
    return np.clip(np.einsum("ij,ij->i", a, b) / np.maximum(den, _TINY), -1.0, 1.0)


@register("bi", "similarity", label="BI")
def bi(x: Any, y: Any = None) -> float:
    """Block Influence (ShortGPT): 1 - mean_t cos(x_t, y_t); 0 for an identity block, 2 for a sign flip."""
    return 1.0 - _per_token(x, y, "bi", _cos)


@register("angular", "similarity", label="angular distance")
def angular(x: Any, y: Any = None) -> float:
    """Angular distance (Gromov et al.): mean_t arccos(cos(x_t, y_t)) / pi, in [0, 1]."""
    return _per_token(x, y, "angular", lambda a, b: np.arccos(_cos(a, b)) / np.pi)


@register("relative_magnitude", "similarity", label="relative magnitude")
def relative_magnitude(x: Any, y: Any = None) -> float:
    """mean_t |y_t - x_t| / |y_t| = |f(x)| / |x + f(x)| for a residual block y = x + f(x)."""

    def rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.linalg.norm(b - a, axis=1) / np.maximum(np.linalg.norm(b, axis=1), _TINY)

    return _per_token(x, y, "relative_magnitude", rel)
