"""Capture settings: what a store keeps. Torch-free, so configuration parsing never imports torch."""

from __future__ import annotations

from dataclasses import dataclass

from blockprune.errors import BadInputError


@dataclass(frozen=True)
class CaptureSettings:
    """How much to keep: ``sample_rows`` tokens per boundary, in ``store_dtype``."""

    sample_rows: int = 4096
    store_dtype: str = "float16"
    capture_mid: bool = True
    batch_size: int = 4
    include_bos: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.sample_rows < 2:
            raise BadInputError("sample_rows must be at least 2")
        if self.store_dtype not in ("float16", "float32"):
            raise BadInputError(f"store_dtype must be float16 or float32, got {self.store_dtype!r}")
        if self.batch_size < 1:
            raise BadInputError("batch_size must be >= 1")
