"""The one estimator registry; a separate module so estimator modules can register without import cycles.

Each estimator is registered with a spec that carries every fact the rest of the system needs about it
(what it measures, which parameters it takes, how it is pooled over calibration windows), so drivers,
validation and reports read the spec instead of parsing the name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import BadInputError
from ..registry import Registry

Estimator = Callable[..., float]
Kind = Literal["entropy", "mi", "similarity"]
Pooling = Literal["pooled", "window"]


@dataclass(frozen=True)
class EstimatorSpec:
    """What an estimator is: ``kind`` says what it measures (entropy of one array, MI or similarity of a pair);
    ``pooling`` says whether it sees all sampled rows at once ("pooled") or one calibration window at a
    time, the per-window values averaged ("window"); ``defaults`` are parameters the name fixes. ``label`` is
    the short name tables show; ``description`` says which reading of which paper or code it follows."""

    name: str
    fn: Estimator
    kind: Kind
    pooling: Pooling = "pooled"
    label: str = ""
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def param_names(self) -> list[str] | None:
        """Keyword parameters the estimator function accepts (``None``: any, it takes ``**params``)."""
        params = inspect.signature(self.fn).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def check_params(self, params: Any) -> dict[str, Any]:
        """The params as a dict, or a one-line error naming the estimator and what it takes."""
        if not isinstance(params, Mapping):
            raise BadInputError(f"estimator {self.name!r}: parameters must be a JSON object "
                                f"(e.g. {{\"k\": 5}}), got {type(params).__name__}")
        allowed = self.param_names()
        if allowed is None:
            return dict(params)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise BadInputError(f"estimator {self.name!r} does not take {', '.join(map(repr, unknown))}; "
                                f"it takes: {', '.join(allowed) or 'no parameters'}")
        return dict(params)

    def __call__(self, x: Any, y: Any = None, **params: Any) -> float:
        return self.fn(x, y, **{**self.defaults, **params})


ESTIMATORS: Registry[EstimatorSpec] = Registry("estimator")


def register(name: str, kind: Kind, *, pooling: Pooling = "pooled", label: str = "", description: str = "",
             **defaults: Any) -> Callable[[Estimator], Estimator]:
    """Decorator: register ``fn`` under ``name`` with its spec; the function itself is returned unchanged."""

    def deco(fn: Estimator) -> Estimator:
        ESTIMATORS.register(name, EstimatorSpec(name, fn, kind, pooling, label or name, description, dict(defaults)))
        return fn

    return deco
