"""Job and trial configuration: frozen, validated before any model is loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from blockprune.calibration.capture import CaptureSettings
from blockprune.selection.plan import GRANULARITIES, CalibrationSettings

# The estimator a method uses when the user names none (paper defaults).
DEFAULT_ESTIMATOR: dict[str, str | None] = {
    "shortgpt": None,  # Block Influence from the every-token streaming statistics
    "relative_magnitude": None,  # streaming statistics too
    "sequential": None,
    "reverse": None,
    "angular": "angular",
    "entrodrop": "entropy.bucket",
    "mi_greedy": "mi.ksg",
    "mi_fbs": "mi.ksg",
    "mi_brute": "mi.ksg",
}
RUN_METHODS = ("angular", "mi_fbs", "mi_brute")  # score runs of whole layers


def check_keys(d: Any, allowed: set[str], where: str, error: type[ValueError] = ValueError) -> dict[str, Any]:
    """A spec section must be a mapping with known keys only; the message lists the allowed ones."""
    if not isinstance(d, dict):
        raise error(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise error(f"unknown key(s) {unknown} in {where}; allowed: {', '.join(sorted(allowed))}")
    return d


@dataclass(frozen=True)
class TrialSpec:
    """One selection to make from a capture: method × estimator × granularity × n_prune."""

    method: str
    n_prune: int
    granularity: str = "layer"
    estimator: str | None = None
    estimator_params: dict[str, Any] = field(default_factory=dict)
    s_start: int | None = None

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.estimator is None and self.method in DEFAULT_ESTIMATOR:
            object.__setattr__(self, "estimator", DEFAULT_ESTIMATOR[self.method])

    @property
    def name(self) -> str:
        est = f"/{self.estimator}" if self.estimator else ""
        return f"{self.method}{est}/{self.granularity}/k={self.n_prune}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalSettings:
    """What to measure on every pruned model (and once on the dense one)."""

    corpus: str | None = None  # default: the calibration corpus (held-out split)
    windows: int = 16
    seq_len: int | None = None  # default: calibration seq_len
    tasks: tuple[str, ...] = ()
    limit: int | None = None
    batch_size: int = 4
    latency: bool = False  # prefill/decode tokens/s (adds tens of seconds per model on a CPU)
    samples: bool = False  # greedy generations for fixed prompts
    rolling_docs: int = 0  # >0: lm-eval-style rolling word/byte perplexity on this many held-out documents


@dataclass(frozen=True)
class JobConfig:
    model: str
    calibration: CalibrationSettings
    trials: tuple[TrialSpec, ...]
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    dtype: str = "float32"
    device_map: str | None = None
    store_root: str | None = None
    save_dir: str | None = None
    text_field: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
