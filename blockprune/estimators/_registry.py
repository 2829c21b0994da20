"""The one estimator registry; a separate module so estimator modules can register without import cycles."""

from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry

Estimator = Callable[..., float]

ESTIMATORS: Registry[Estimator] = Registry("estimator")
