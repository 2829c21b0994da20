"""Information measures on arrays (n_tokens, d): pure numpy/scipy, optional torch; no models, no Ray.

Every estimator is ``score(x, y=None, **params) -> float`` (nats for entropy and MI) and is registered by a
stable name in ONE registry; ``get(name)`` returns the callable and ``names()`` lists them:

    bi, angular, relative_magnitude                       similarity of a block's input and output
    entropy.bucket, entropy.knn, entropy.renyi, entropy.gaussian
    mi.ksg, mi.gaussian, mi.sliced
"""

from __future__ import annotations

from . import entropy, knn, mi, preprocess, reference, similarity
from ._registry import ESTIMATORS, Estimator
from .similarity import angular, bi, relative_magnitude


def get(name: str) -> Estimator:
    """The estimator registered as ``name``; UnknownNameError lists the known names."""
    return ESTIMATORS.get(name)


def names() -> list[str]:
    return ESTIMATORS.names()


__all__ = [
    "ESTIMATORS", "Estimator", "angular", "bi", "entropy", "get", "knn", "mi", "names", "preprocess",
    "reference", "relative_magnitude", "similarity",
]
