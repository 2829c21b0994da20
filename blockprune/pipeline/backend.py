"""Where a job's heavy steps run: the :class:`Backend` protocol and the single-process :class:`LocalBackend`.

The job loop (:func:`blockprune.pipeline.job.run_job`) is the same for every backend; a backend only says
how to hold the model, capture a store, compute exact scores and evaluate a plan. The Ray backend
(:mod:`blockprune.distributed.backend`) puts the model in actors on GPUs and the scores in Ray tasks.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from blockprune.calibration.store import ActivationStore
from blockprune.models.zoo import load_model
from blockprune.pipeline.evaluate import Evaluation, evaluate_plan, measure_streamed
from blockprune.pipeline.prepare import Prepared, capture_or_reuse
from blockprune.pipeline.scoring import LocalScorers, Scorers
from blockprune.selection.plan import PrunePlan


class Backend(Protocol):
    """The few operations a job needs from where it runs.

    ``engine``/``engine_settings``/``engine_tags`` describe it for MLflow (the same keys on every backend);
    ``counters`` returns (exact scores computed, scoring batches) so far, for the job's metrics."""

    engine: str

    def engine_settings(self) -> dict[str, Any]: ...

    def engine_tags(self) -> dict[str, str]: ...

    def describe(self) -> str: ...

    def open(self, p: Prepared) -> None: ...

    def capture(self, p: Prepared, progress: bool) -> tuple[ActivationStore, bool]: ...

    @property
    def scorers(self) -> Scorers: ...

    def evaluate(self, p: Prepared, plan: PrunePlan | None, save_dir: str | None, progress: bool) -> Evaluation: ...

    def counters(self) -> tuple[int, int]: ...

    def heal(self, p: Prepared, plan: PrunePlan, out_dir: str, tracker: Any, parent_run_id: str | None,
             progress: bool) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class LocalBackend:
    """Everything in this process: the model on CPU (or the job's ``device_map``), scores computed inline."""

    engine = "local"

    def __init__(self) -> None:
        self.model: Any = None
        self._scorers = LocalScorers()
        self.streamed_device: str | None = None  # set when the model is run layer by layer instead of loaded
        self.path_reason = ""

    def engine_settings(self) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def engine_tags(self) -> dict[str, str]:
        return {"blockprune.engine": self.engine, "engine.job_id": f"local-{os.getpid()}"}

    def describe(self) -> str:
        return f"{'layer-streamed' if self.streamed_device else 'resident'} ({self.path_reason}); "

    def open(self, p: Prepared) -> None:
        """Load the model, or (``streamed``, or automatically when it does not fit) plan to run it layer by layer."""
        from blockprune.calibration.streamed import choose_capture_path

        job = p.job
        device = "cuda:0" if job.device_map is not None and _cuda() else "cpu"
        choice = choose_capture_path(p.resolved.path, job.dtype, streamed=job.streamed, device=device)
        self.path_reason = choice.reason
        if choice.streamed:
            self.streamed_device = device
            return
        self.model, _, _ = load_model(job.model, dtype=job.dtype, device_map=job.device_map)

    def capture(self, p: Prepared, progress: bool) -> tuple[ActivationStore, bool]:
        return capture_or_reuse(p, self.model, progress, streamed_device=self.streamed_device)

    @property
    def scorers(self) -> Scorers:
        return self._scorers

    def evaluate(self, p: Prepared, plan: PrunePlan | None, save_dir: str | None, progress: bool) -> Evaluation:
        if self.streamed_device is not None:
            return measure_streamed(p, plan, self.streamed_device, progress)
        return evaluate_plan(self.model, p, plan, save_dir, progress=progress)

    def counters(self) -> tuple[int, int]:
        return self._scorers.counters()

    def heal(self, p: Prepared, plan: PrunePlan, out_dir: str, tracker: Any, parent_run_id: str | None,
             progress: bool) -> dict[str, Any]:
        """LoRA-heal one plan in this process (the model is released first: healing loads its own copy)."""
        from blockprune.healing.run import heal_plan

        self.model = None
        assert p.job.heal is not None
        return heal_plan(plan, p.resolved.name, p.job.heal, out_dir, tracker=tracker, parent_run_id=parent_run_id,
                         dense=True, progress=progress).to_dict()

    def close(self) -> None:
        self.model = None
