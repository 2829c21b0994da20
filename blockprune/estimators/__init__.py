"""Information measures on arrays (n_tokens, d): pure numpy/scipy, optional torch; no models, no Ray.

Every estimator is ``score(x, y=None, **params) -> float`` (nats for entropy and MI) and is registered by a
stable name in ONE registry with an :class:`EstimatorSpec` (its kind, parameters, pooling); ``get(name)``
returns that spec, which is itself callable, and ``names()`` lists them:

    bi, angular, relative_magnitude                       similarity of a block's input and output
    entropy.bucket, entropy.knn, entropy.renyi, entropy.gaussian      one pooled sample of all rows
    entropy.knn_window, entropy.bucket_window, entropy.renyi_window   per calibration window, averaged
                                                           (EntroDrop's released code; pooling="window")
    mi.perdim, mi.perdim_gaussian                         mean over coordinates of a 1-D MI (MI-PRUN)
    mi.ksg, mi.gaussian, mi.sliced                        MI of the whole d-dimensional states
"""

from __future__ import annotations

from . import entropy, entropy_window, knn, mi, perdim, preprocess, reference, similarity
from ._registry import ESTIMATORS, Estimator, EstimatorSpec, register
from .similarity import angular, bi, relative_magnitude


def get(name: str) -> EstimatorSpec:
    """The spec of the estimator registered as ``name`` (callable); UnknownNameError lists the known names."""
    return ESTIMATORS.get(name)


def names(kind: str | None = None) -> list[str]:
    """Registered estimator names, optionally only those of one kind ("entropy", "mi", "similarity")."""
    return [n for n in ESTIMATORS.names() if kind is None or ESTIMATORS.get(n).kind == kind]


__all__ = [
    "ESTIMATORS", "Estimator", "EstimatorSpec", "angular", "bi", "entropy", "entropy_window", "get", "knn", "mi",
    "names", "perdim", "preprocess",
    "reference", "register", "relative_magnitude", "similarity",
]
