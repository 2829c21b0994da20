"""Healing in MLflow: a child run ``heal`` under the trial it heals, and reading it back for ``compare``.

Why a child run rather than the trial's own run: MLflow params are write-once, and a trial can be
healed more than once (other budgets, ranks, corpora) — each healing gets its own params, loss curve
and artifacts without touching the trial's pruned numbers, and :func:`healed_metrics` picks the latest
finished one per trial. Without a trial (a plan file or checkpoint from elsewhere) the heal run is a
top-level run of kind ``heal``.

Layout of a heal run:

- params: the flattened :class:`~blockprune.healing.config.HealConfig` (``lr``, ``lora.rank`` …), ``source``,
  ``plan.model``, ``plan.granularity``, ``plan.blocks``;
- metrics (curves, step = optimizer step): ``train/loss``, ``train/lr``, ``train/tokens``, ``val/ppl``,
  ``val/ppl.<corpus>``; scalars: ``ppl_before.<corpus>``, ``ppl_after.<corpus>``, ``ppl_dense.<corpus>``,
  ``ppl_ratio_before.<corpus>``, ``ppl_ratio_after.<corpus>``, ``log_gap_recovered.<corpus>``, ``steps``,
  ``tokens_trained``, ``train_seconds``, ``wall_seconds``, ``trainable_params``;
- tags: ``blockprune.kind = heal``, ``heal.status`` (completed | time_budget | interrupted), ``heal.merged_path``,
  ``heal.adapter_path``, ``heal.backend``, ``heal.devices``;
- artifacts: ``heal.json`` (everything above, plus the loss and validation histories).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from blockprune.tracking.tracker import KIND_TAG, Tracker, default_tracking_uri

HEAL_KIND = "heal"
RUN_FILE = "heal_run.json"  # in the output folder: which MLflow run a resumed healing continues
PARENT_TAG = "mlflow.parentRunId"


def find_trial_run(tracker: Tracker, pruned_path: str | Path) -> str | None:
    """The trial run that saved this pruned checkpoint (its ``saved_to`` tag), when exactly one did."""
    if not tracker.enabled:
        return None
    client = tracker.client()
    exp = client.get_experiment_by_name(tracker.experiment)
    if exp is None:
        return None
    wanted = {str(Path(pruned_path)), str(Path(pruned_path).resolve())}
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'trial'", max_results=5000)
    hits = [r.info.run_id for r in runs if r.data.tags.get("saved_to") in wanted
            or (r.data.tags.get("saved_to") and str(Path(r.data.tags["saved_to"]).resolve()) in wanted)]
    return hits[0] if len(hits) == 1 else None


def read_run_file(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None


@contextlib.contextmanager
def heal_run(tracker: Tracker, name: str, *, parent_run_id: str | None, params: Mapping[str, Any],
             tags: Mapping[str, Any], out_dir: Path, resume: bool) -> Iterator[str | None]:
    """The heal run (new, or the one a resumed healing started); its id is written to ``out_dir/heal_run.json``."""
    if not tracker.enabled:
        yield None
        return
    previous = read_run_file(out_dir) if resume else None
    if previous and previous.get("tracking_uri") == tracker.tracking_uri:
        mlflow = tracker.mlflow
        with mlflow.start_run(run_id=previous["run_id"]) as r:
            tracker.set_tags({**tags, "heal.resumed": "true"})
            yield r.info.run_id
        return
    with tracker.run(name, params=params, parent_run_id=parent_run_id, tags={KIND_TAG: HEAL_KIND, **tags}) as run_id:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": tracker.tracking_uri,
                                                          "experiment": tracker.experiment, "parent": parent_run_id}))
        yield run_id


def log_result(tracker: Tracker, result: Any, status: str) -> None:
    """Scalars, locations and the full summary of a finished (or budget-stopped) healing."""
    if not tracker.enabled:
        return
    tracker.log_metrics(result.metrics())
    tracker.set_tags({"heal.status": status, "heal.merged_path": result.merged_path or "",
                      "heal.adapter_path": result.adapter_path or "", "heal.out_dir": result.out_dir})
    tracker.log_dict(result.to_dict(), "heal.json")


def healed_metrics(trial_run_ids: Iterable[str], tracking_uri: str | None = None,
                   client: Any = None) -> dict[str, dict[str, Any]]:
    """For ``blockprune compare``: the latest finished heal run under each trial run.

    Returns ``{trial_run_id: {"heal_run_id", "status", "merged_path", <every scalar metric of the heal run>}}``
    — e.g. ``ppl_after.<corpus>``, ``ppl_ratio_after.<corpus>`` (÷ dense), ``log_gap_recovered.<corpus>``,
    ``tokens_trained``, ``steps``, ``train_seconds``. Trials never healed are absent.
    """
    ids = list(dict.fromkeys(trial_run_ids))
    if not ids:
        return {}
    if client is None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())
    experiments = sorted({client.get_run(i).info.experiment_id for i in ids})
    runs = client.search_runs(experiments, filter_string=f"tags.`{KIND_TAG}` = '{HEAL_KIND}' and "
                              "attributes.status = 'FINISHED'", max_results=50000)
    out: dict[str, dict[str, Any]] = {}
    wanted = set(ids)
    for r in sorted(runs, key=lambda r: r.info.start_time or 0):  # later runs overwrite earlier ones
        parent = r.data.tags.get(PARENT_TAG)
        if parent not in wanted:
            continue
        out[parent] = {"heal_run_id": r.info.run_id, "status": r.data.tags.get("heal.status", ""),
                       "merged_path": r.data.tags.get("heal.merged_path", ""), **dict(r.data.metrics)}
    return out
