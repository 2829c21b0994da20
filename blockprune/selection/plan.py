"""PrunePlan: the unit that is compared in MLflow and handed to ``apply_plan``.

A frozen dataclass that round-trips through JSON unchanged. It carries everything needed to
reproduce and audit a decision: which model (id + revision), which blocks at which granularity,
which method/estimator with which parameters, which calibration data, and the scores behind it.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from blockprune.errors import BadInputError, MissingFileError

Granularity = Literal["layer", "attention", "mlp"]
GRANULARITIES: tuple[str, ...] = ("layer", "attention", "mlp")
PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class CalibrationSettings:
    """Which tokens a plan was calibrated on; part of every plan and every store key."""

    corpus: str
    n_samples: int
    seq_len: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_samples < 1 or self.seq_len < 2:
            raise BadInputError(f"need n_samples >= 1 and seq_len >= 2, got {self.n_samples} × {self.seq_len}")


@dataclass(frozen=True)
class PrunePlan:
    """Blocks to remove from one model, and why.

    ``blocks`` are 0-based decoder-layer indices of the *original* model. For ``attention``/``mlp``
    granularity they name layers whose attention/MLP sub-block is skipped.
    ``scores`` maps a score name (``"bi"``, ``"delta_h"``, ``"mi"`` …) to one value per block;
    ``run_scores`` maps ``"start-end"`` (inclusive) to the exact score of a contiguous run.
    """

    model_id: str
    n_blocks: int
    blocks: tuple[int, ...]
    granularity: Granularity = "layer"
    method: str = "shortgpt"
    estimator: str | None = None
    estimator_params: dict[str, Any] = field(default_factory=dict)
    calibration: CalibrationSettings | None = None
    revision: str | None = None
    scores: dict[str, list[float]] = field(default_factory=dict)
    run_scores: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise BadInputError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        blocks = tuple(int(b) for b in self.blocks)
        if len(set(blocks)) != len(blocks):
            raise BadInputError(f"duplicate blocks in plan: {blocks}")
        bad = [b for b in blocks if not 0 <= b < self.n_blocks]
        if bad:
            raise BadInputError(f"block indices {bad} out of range for a model with {self.n_blocks} blocks")
        if self.granularity == "layer" and len(blocks) >= self.n_blocks:
            raise BadInputError(f"cannot remove all {self.n_blocks} layers")
        object.__setattr__(self, "blocks", tuple(sorted(blocks)))

    @property
    def n_prune(self) -> int:
        return len(self.blocks)

    @property
    def kept(self) -> tuple[int, ...]:
        """Layers that remain (for ``layer`` plans), in original indices."""
        return tuple(i for i in range(self.n_blocks) if i not in set(self.blocks))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        d["format_version"] = PLAN_FORMAT_VERSION
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any) -> PrunePlan:
        """A plan from its JSON form; a wrong shape is a one-line :class:`BadInputError` saying what is wrong."""
        if not isinstance(d, dict):
            raise BadInputError(f"a plan must be a JSON object, got a {type(d).__name__}")
        d = dict(d)
        version = d.pop("format_version", PLAN_FORMAT_VERSION)
        if version != PLAN_FORMAT_VERSION:
            raise BadInputError(f"unsupported plan format_version {version}")
        _check_keys(d, cls, "a plan")
        cal = d.get("calibration")
        if cal is not None:
            if not isinstance(cal, dict):
                raise BadInputError(f"the plan's calibration must be an object, got {type(cal).__name__}")
            _check_keys(cal, CalibrationSettings, "the plan's calibration")
            d["calibration"] = CalibrationSettings(**cal)
        blocks = d["blocks"]
        if not isinstance(blocks, list | tuple) or not all(isinstance(b, int) and not isinstance(b, bool)
                                                           for b in blocks):
            raise BadInputError(f"the plan's blocks must be a list of integers, got {blocks!r}")
        d["blocks"] = tuple(blocks)
        for key, kind, what in (("n_blocks", int, "an integer"), ("model_id", str, "a string"),
                                ("estimator_params", dict, "an object"), ("scores", dict, "an object"),
                                ("run_scores", dict, "an object"), ("info", dict, "an object")):
            if key in d and (not isinstance(d[key], kind) or isinstance(d[key], bool)):
                raise BadInputError(f"the plan's {key} must be {what}, got {d[key]!r}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> PrunePlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadInputError(f"the plan is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrunePlan:
        """Read a plan file; every problem is one line naming the file."""
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"plan file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise BadInputError(f"plan file {path} is not UTF-8 text (byte {e.start})") from None
        try:
            return cls.from_json(text)
        except BadInputError as e:
            raise BadInputError(f"plan file {path}: {e}") from None


def _check_keys(d: dict[str, Any], cls: Any, what: str) -> None:
    """Missing required keys or unknown keys of a dataclass's JSON form, both named."""
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing, unknown = sorted(required - set(d)), sorted(set(d) - names)
    problems = ([f"missing key(s) {', '.join(missing)}"] if missing else []) + (
        [f"unknown key(s) {', '.join(unknown)}"] if unknown else [])
    if problems:
        raise BadInputError(f"{what} has {' and '.join(problems)}; its keys are: {', '.join(sorted(names))}")


def run_key(run: tuple[int, ...] | list[int]) -> str:
    """``"start-end"`` (inclusive) key of a contiguous run, the form ``PrunePlan.run_scores`` uses."""
    if not run:
        raise ValueError("a run needs at least one block")
    return f"{int(run[0])}-{int(run[-1])}"


def parse_run_key(key: str) -> tuple[int, ...]:
    """Inverse of :func:`run_key`: ``"3-5"`` → ``(3, 4, 5)``."""
    try:
        start, end = (int(p) for p in key.split("-"))
    except ValueError:
        raise ValueError(f"run key must look like 'start-end', got {key!r}") from None
    if not 0 <= start <= end:
        raise ValueError(f"run key {key!r} needs 0 <= start <= end")
    return tuple(range(start, end + 1))
