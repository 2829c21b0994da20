"""Input checks and conversion shared by every estimator.

Bad input must fail early with a ValueError that names the problem, before any O(N^2) work starts.
Torch tensors (bf16 and fp16 included) and numpy arrays of any real dtype are accepted; the float
format they came in is kept, because dequantisation noise is scaled to that format's ulp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FloatFormat:
    """Mantissa bits and smallest normal exponent of the dtype the data arrived in (for its ulp)."""

    name: str
    nmant: int
    min_exp: int

    def ulp(self, values: np.ndarray) -> np.ndarray:
        """Spacing of this format at each value, one quantisation step: 2^floor(log2|v|) (read off the
        exponent bits, far cheaper than frexp) times 2^-nmant, floored at the subnormal spacing."""
        v = np.ascontiguousarray(values)
        if v.dtype == np.float32:
            step = (v.view(np.uint32) & np.uint32(0x7F800000)).view(np.float32)
        else:
            v = v.astype(np.float64, copy=False)
            step = (v.view(np.uint64) & np.uint64(0x7FF0000000000000)).view(np.float64)
        step *= step.dtype.type(2.0**-self.nmant)  # in place: these arrays are as large as the input
        return np.maximum(step, step.dtype.type(2.0 ** (self.min_exp - self.nmant)), out=step)


FORMATS = {
    "bfloat16": FloatFormat("bfloat16", 7, -126),
    "float16": FloatFormat("float16", 10, -14),
    "float32": FloatFormat("float32", 23, -126),
    "float64": FloatFormat("float64", 52, -1022),
}


def _from_torch(a: Any, name: str) -> tuple[np.ndarray, FloatFormat]:
    import torch

    t = a.detach()
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must hold real numbers, got torch dtype {t.dtype}")
    dname = str(t.dtype).removeprefix("torch.")
    fmt = FORMATS.get(dname, FORMATS["float64"])
    if dname in ("bfloat16", "float16"):
        t = t.float()
    elif not t.is_floating_point():
        t = t.double()
    return t.cpu().numpy(), fmt


def as_float_array(a: Any, name: str = "x") -> tuple[np.ndarray, FloatFormat]:
    """Return a 2-D float32/float64 numpy view or copy of ``a`` plus its source format; check it."""
    if type(a).__module__.startswith("torch"):
        arr, fmt = _from_torch(a, name)
    else:
        arr = np.asarray(a)
        dname = arr.dtype.name
        if dname == "bfloat16":  # ml_dtypes
            arr, fmt = arr.astype(np.float32), FORMATS["bfloat16"]
        elif arr.dtype.kind == "f":
            fmt = FORMATS.get(dname, FORMATS["float64"])
            if arr.dtype not in (np.float32, np.float64):
                arr = arr.astype(np.float32 if dname == "float16" else np.float64)
        elif arr.dtype.kind in "iu":
            arr, fmt = arr.astype(np.float64), FORMATS["float64"]
        else:
            raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_tokens, d); got shape {tuple(arr.shape)}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(arr.shape)}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        row = int(np.argmin(finite.all(axis=1)))
        raise ValueError(f"{name} contains {bad} NaN/inf value(s) (first in row {row})")
    return arr, fmt


def as_pair(x: Any, y: Any, what: str) -> tuple[np.ndarray, FloatFormat, np.ndarray, FloatFormat]:
    """Check and convert a paired sample: both 2-D, finite, same number of rows."""
    if y is None:
        raise ValueError(f"{what} needs two arrays x and y")
    xa, xf = as_float_array(x, "x")
    ya, yf = as_float_array(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise ValueError(
            f"x and y must have the same number of rows (paired tokens); got {xa.shape[0]} and {ya.shape[0]}"
        )
    return xa, xf, ya, yf


def only_x(y: Any, what: str) -> None:
    """Entropy estimators take one array; a second one is a caller mistake, not something to ignore."""
    if y is not None:
        raise ValueError(f"{what} takes only x; for an entropy change call it on x and y separately")


def check_k(n: int, k: int, after: str = "") -> None:
    """k-NN estimators need at least k+1 distinct samples."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n <= k:
        raise ValueError(f"need more than k={k} samples{after}, got N={n}")


def check_choice(value: Any, name: str, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
