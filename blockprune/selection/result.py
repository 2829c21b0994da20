"""``Selection``: what every selection algorithm returns, and how it becomes a ``PrunePlan``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from blockprune.selection.plan import CalibrationSettings, Granularity, PrunePlan, run_key

Run = tuple[int, ...]


@dataclass(frozen=True)
class Selection:
    """The blocks an algorithm chose, and the evidence.

    ``evaluations`` is the number of distinct runs the run scorer was asked for (singles included;
    0 for methods that only read per-block scores), the cost that matters when each exact score is
    a KSG estimate. ``history`` is the pruning set after every iteration, starting with the first
    pick (one entry for one-shot methods). ``run_scores`` holds every exact score obtained, so a
    plan can record them. ``info`` is JSON-friendly detail (s_start, iterations, stop reason …).
    """

    blocks: tuple[int, ...]
    evaluations: int = 0
    history: tuple[tuple[int, ...], ...] = ()
    info: dict[str, Any] = field(default_factory=dict, hash=False, compare=True)
    run_scores: Mapping[Run, float] = field(default_factory=dict, hash=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        blocks = tuple(sorted(int(b) for b in self.blocks))
        if len(set(blocks)) != len(blocks):
            raise ValueError(f"duplicate blocks in selection: {blocks}")
        object.__setattr__(self, "blocks", blocks)
        object.__setattr__(self, "history", tuple(tuple(sorted(p)) for p in self.history) or (blocks,))
        object.__setattr__(self, "run_scores", dict(self.run_scores))

    @property
    def n_prune(self) -> int:
        return len(self.blocks)

    def to_plan(
        self,
        model_id: str,
        n_blocks: int,
        *,
        method: str | None = None,
        granularity: Granularity = "layer",
        estimator: str | None = None,
        estimator_params: dict[str, Any] | None = None,
        calibration: CalibrationSettings | None = None,
        revision: str | None = None,
        scores: dict[str, list[float]] | None = None,
    ) -> PrunePlan:
        """A plan carrying these blocks, the exact run scores (``"start-end"`` keys) and the info.

        ``info`` is normalised to JSON types (tuples → lists) so the plan round-trips unchanged;
        the history is stored there too. ``method`` defaults to ``info["method"]``.
        """
        info = _jsonable(dict(self.info))
        info.setdefault("evaluations", self.evaluations)
        info.setdefault("history", [list(p) for p in self.history])
        method = method or str(self.info.get("method", "shortgpt"))
        return PrunePlan(
            model_id=model_id,
            n_blocks=n_blocks,
            blocks=self.blocks,
            granularity=granularity,
            method=method,
            estimator=estimator,
            estimator_params=dict(estimator_params or {}),
            calibration=calibration,
            revision=revision,
            scores={k: [float(x) for x in v] for k, v in (scores or {}).items()},
            run_scores={run_key(r): float(v) for r, v in self.run_scores.items()},
            info=info,
        )


def _jsonable(obj: Any) -> Any:
    """Tuples → lists, numpy scalars → Python, keys → str: what ``json.loads`` gives back."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return obj.item()
    return obj
