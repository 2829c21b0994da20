"""Capture settings: what a store keeps. Torch-free, so configuration parsing never imports torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from blockprune.errors import BadInputError

SAMPLINGS = ("tokens", "windows")


@dataclass(frozen=True)
class CaptureSettings:
    """How much to keep: at most ``sample_rows`` rows per boundary, in ``store_dtype``.

    ``sampling`` says which rows: ``"tokens"`` draws ``sample_rows`` token positions across all windows
    (what pooled estimators want: a spread-out sample); ``"windows"`` keeps every position of
    ``sample_rows // row length`` seeded windows (all of them when that many fit), so per-window estimators
    (``pooling="window"``: EntroDrop's released code scores each window's whole sequence) see complete
    windows. Memory is bounded by ``sample_rows`` either way. ``include_bos`` keeps the BOS row (position
    0) of windows that start with one in the store (EntroDrop's code keeps position 0 of every window);
    streamed statistics never count BOS, and pooled estimators skip a kept BOS row
    (``calibration.scoring.estimator_rows``), so only per-window estimators see it.
    """

    sample_rows: int = 4096
    store_dtype: str = "float16"
    capture_mid: bool = True
    batch_size: int = 4
    include_bos: bool = False
    seed: int = 0
    sampling: str = "tokens"

    def __post_init__(self) -> None:
        if self.sample_rows < 2:
            raise BadInputError("sample_rows must be at least 2")
        if self.sampling not in SAMPLINGS:
            raise BadInputError(f"sampling must be one of {', '.join(map(repr, SAMPLINGS))}, got {self.sampling!r}")
        if self.store_dtype not in ("float16", "float32"):
            raise BadInputError(f"store_dtype must be float16 or float32, got {self.store_dtype!r}")
        if self.batch_size < 1:
            raise BadInputError("batch_size must be >= 1")


def for_window_pooling(settings: CaptureSettings) -> CaptureSettings:
    """The settings a per-window estimator (``pooling="window"``) needs: whole windows, position 0 kept."""
    return replace(settings, sampling="windows", include_bos=True)


def key_settings(settings: CaptureSettings) -> dict[str, object]:
    """The settings as they enter a store key or a study fingerprint: a field added later enters only when it
    differs from its default, so keys made before it existed (which behave as the default) stay valid."""
    cfg = asdict(settings)
    if cfg.get("sampling") == "tokens":
        del cfg["sampling"]
    return cfg
