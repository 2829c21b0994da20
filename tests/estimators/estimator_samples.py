"""Seeded sample generators shared by the estimator tests (a unique module name: several test folders
have a conftest.py, so importing helpers from "conftest" would be ambiguous in a full run)."""

from __future__ import annotations

import numpy as np


def noisy_pair(rng: np.random.Generator, n: int, d: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """X ~ N(0, I_d), Y = X + sigma * eps: true MI = d/2 * ln(1 + 1/sigma^2)."""
    x = rng.standard_normal((n, d))
    return x, x + sigma * rng.standard_normal((n, d))


def true_mi(d: int, sigma: float) -> float:
    return 0.5 * d * float(np.log1p(1.0 / sigma**2))
