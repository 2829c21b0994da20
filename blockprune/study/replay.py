"""The study's use of :mod:`blockprune.evaluation.prefix_replay`: record the dense model once per evaluation
stage, then start every plan at its first changed layer.

With ``evaluation: {replay_dense_prefix: true}`` the dense model's pass of a stage (perplexity windows, or
lm-eval requests) records its hidden states after exactly the layers the stage's remaining plans need (the
layer before each plan's lowest block). When the dense model was evaluated in an earlier piece, one extra
dense pass records them, and its numbers are checked against the logged ones. A marker file says a stage's
recording finished, so a resumed study does not record again. Results are the same with or without it (a
batch not recorded runs in full); only time changes, and each run logs how many layers it replayed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockprune.env import cache_dir
from blockprune.evaluation.prefix_replay import ReplayStats, recording, replay_dir, replaying


@dataclass(frozen=True)
class StageReplay:
    """Where a model's stage records its dense hidden states, and after which layers."""

    root: Path
    stage: str  # "ppl" or "tasks"
    tag: str  # what the stage's inputs are (corpora/windows, or tasks/limits/batch size)
    layers: tuple[int, ...]

    @property
    def marker(self) -> Path:
        digest = hashlib.sha256(f"{self.stage}|{self.tag}".encode()).hexdigest()[:12]
        return self.root / f"recorded-{self.stage}-{digest}.json"

    def recorded_layers(self) -> set[int]:
        try:
            return set(json.loads(self.marker.read_text())["layers"])
        except (OSError, ValueError, KeyError):
            return set()

    def covered(self) -> bool:
        """A finished recording holds every layer the remaining plans need."""
        return set(self.layers) <= self.recorded_layers()

    def record(self, dense: Any) -> AbstractContextManager[ReplayStats]:
        return recording(dense, self.root, self.layers)

    def replay(self, pruned: Any) -> AbstractContextManager[ReplayStats]:
        return replaying(pruned, self.root)

    def mark(self, stats: ReplayStats, seconds: float) -> None:
        """Note that the recording finished (also when it stopped early: results never depend on it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        payload = {"stage": self.stage, "tag": self.tag, "layers": sorted(self.recorded_layers() | set(self.layers)),
                   "saved": stats.saved, "stopped": stats.stopped, "seconds": round(seconds, 1)}
        tmp = self.marker.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, self.marker)


def stage_replay(model_name: str, revision: str | None, spec: Any, stage: str,
                 plan_blocks: Iterable[tuple[int, ...]]) -> StageReplay | None:
    """The stage's replay for the plans still to evaluate, or ``None`` when the spec does not ask for it or
    no plan would skip a layer."""
    ev = spec.evaluation
    if not ev.replay_dense_prefix:
        return None
    layers = tuple(sorted({min(b) - 1 for b in plan_blocks if b and min(b) >= 1}))
    if not layers:
        return None
    import transformers

    identity = {"revision": revision, "dtype": spec.dtype, "lm_eval_dtype": ev.lm_eval_dtype,
                "transformers": transformers.__version__}
    tag = (f"{','.join(ev.corpora)}|{ev.windows}x{ev.seq_len}|bs{ev.batch_size}" if stage == "ppl"
           else f"{ev.tasks_tag}|bs{ev.batch_size}")
    return StageReplay(replay_dir(Path(cache_dir()) / "replay", model_name, identity), stage, tag, layers)


def differing_metrics(logged: dict[str, float], fresh: dict[str, float]) -> list[str]:
    """Metrics a recording pass of the dense model computed differently from its logged run, each with its
    relative difference: another machine or library version moves a perplexity by ~1e-7 (float rounding),
    a changed model or corpus by far more, and the message has to tell the two apart."""
    return [f"{k} (relative {abs(v - logged[k]) / max(abs(logged[k]), 1e-30):.1e})" for k, v in fresh.items()
            if k in logged and not k.endswith("_seconds") and logged[k] != v]
