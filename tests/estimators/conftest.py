"""Fixtures for the estimator tests."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """One fixed seed: every accuracy test is reproducible and can still fail."""
    return np.random.default_rng(20250101)
