"""Reading a comparison's runs back from MLflow: trial runs as :class:`PlanRow`, job parents as :class:`DenseRow`.

The only module of the package that talks to MLflow (imported when a client is made, not before). Filters
on run params are applied before any ``plan.json`` is downloaded, so a narrow comparison of a large
experiment stays fast.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from blockprune.errors import BadInputError
from blockprune.healing.tracking import healed_metrics
from blockprune.selection.plan import PrunePlan
from blockprune.tracking.compare.comparison import JOB_KIND, TRIAL_KIND, CompareConfig, DenseRow, PlanRow
from blockprune.tracking.tracker import TrackingUnavailableError, check_store, default_tracking_uri


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, name: str) -> Any:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise BadInputError(f"no MLflow experiment named {name!r} at this tracking URI; known: {', '.join(names) or 'none'}")
    return exp


def resolve_parent(client: Any, experiment_id: str, ref: str) -> str:
    """A parent run from an id, a run name, or ``latest`` (the most recent job)."""
    if ref == "latest":
        runs = client.search_runs([experiment_id], f"tags.`blockprune.kind` = '{JOB_KIND}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise BadInputError("no job (parent) runs in this experiment")
        return runs[0].info.run_id
    try:
        return client.get_run(ref).info.run_id
    except Exception:  # not an id: try it as a run name
        escaped = ref.replace("'", "\\'")
        runs = client.search_runs([experiment_id], f"attributes.run_name = '{escaped}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise BadInputError(f"no run with id or name {ref!r} in this experiment") from None
        return runs[0].info.run_id


def _load_plan(client: Any, run_id: str) -> PrunePlan | None:
    with tempfile.TemporaryDirectory(prefix="blockprune-compare-") as d:
        try:
            path = client.download_artifacts(run_id, "plan.json", d)
        except Exception:  # a run without a plan (crashed trial) is shown from its params
            return None
        return PrunePlan.from_dict(json.loads(Path(path).read_text()))


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def plan_row(run: Any, plan: PrunePlan | None) -> PlanRow:
    """One trial run as a table row: identity from its plan when it has one, else from its params and tags."""
    params, tags = run.data.params, run.data.tags
    if plan is not None:
        blocks, n_blocks = tuple(plan.blocks), plan.n_blocks
        model, method, estimator, gran = plan.model_id, plan.method, plan.estimator, plan.granularity
    else:
        blocks = tuple(int(b) for b in tags.get("blockprune.blocks", "").split(",") if b.strip())
        n_blocks = _int(run.data.metrics.get("n_blocks"))
        model, method, gran = params.get("model", tags.get("model", "?")), params.get("method", "?"), params.get(
            "granularity", "layer")
        estimator = params.get("estimator")
        estimator = None if estimator in (None, "none", "None") else estimator
    return PlanRow(
        run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id[:8],
        parent_run_id=tags.get("mlflow.parentRunId"), model=model, method=method, estimator=estimator,
        granularity=gran, n_prune=len(blocks) or _int(params.get("n_prune")), n_blocks=n_blocks, blocks=blocks,
        metrics=dict(run.data.metrics), plan=plan, start_time=run.info.start_time or 0,
    )


def fetch(cfg: CompareConfig) -> tuple[str, str, str | None, list[PlanRow], list[DenseRow]]:
    """(tracking URI, experiment id, parent run id, plan rows, dense rows) for a config.

    A store that cannot be read (a broken database, a server that fails mid-way) is reported as
    :class:`TrackingUnavailableError`, one line, instead of MLflow's traceback."""
    from mlflow.exceptions import MlflowException

    uri = cfg.tracking_uri or default_tracking_uri()
    check_store(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise BadInputError(f"no MLflow store at {uri}; pass --tracking-uri or run from the folder holding mlflow.db")
    try:
        return _fetch(cfg, uri)
    except (MlflowException, OSError) as e:
        raise TrackingUnavailableError(f"cannot read runs from {uri}: {str(e).splitlines()[0]}") from e


def _fetch(cfg: CompareConfig, uri: str) -> tuple[str, str, str | None, list[PlanRow], list[DenseRow]]:
    client = _client(uri)
    exp = _experiment(client, cfg.experiment)
    parent = resolve_parent(client, exp.experiment_id, cfg.parent_run) if cfg.parent_run else None
    flt = (f"tags.`mlflow.parentRunId` = '{parent}'" if parent
           else f"tags.`blockprune.kind` = '{TRIAL_KIND}'")
    runs = client.search_runs([exp.experiment_id], flt, order_by=["attributes.start_time ASC"],
                              max_results=cfg.max_runs)
    runs = [r for r in runs if keep_run(cfg, r.data.params, r.data.tags)]
    rows = [plan_row(r, _load_plan(client, r.info.run_id)) for r in runs]
    rows = [r for r in rows if keep_row(cfg, r)]
    add_healed(rows, client)
    dense: list[DenseRow] = []
    for pid in dict.fromkeys(r.parent_run_id for r in rows if r.parent_run_id):
        try:
            prun = client.get_run(pid)
        except Exception:  # parent deleted: nothing to show as reference
            continue
        dm = {k.removeprefix("dense."): v for k, v in prun.data.metrics.items() if k.startswith("dense.")}
        if dm:
            model = prun.data.tags.get("model") or prun.data.params.get("model", "?")
            dense.append(DenseRow(pid, model, dm))
    return uri, exp.experiment_id, parent, rows, dense


def healed_columns(h: dict[str, Any]) -> dict[str, float]:
    """A trial's latest healing as three numbers over its evaluation corpora: perplexity ÷ dense before and
    after healing (geometric means, measured by the healing run on the same windows) and the share of the
    log-perplexity gap it recovered (mean)."""
    def values(prefix: str) -> list[float]:
        return [float(v) for k, v in h.items() if k.startswith(prefix) and isinstance(v, int | float)]

    out: dict[str, float] = {}
    for key, prefix in (("healed.ppl_ratio_before", "ppl_ratio_before."), ("healed.ppl_ratio", "ppl_ratio_after.")):
        if vals := values(prefix):
            out[key] = math.exp(sum(math.log(v) for v in vals) / len(vals))
    if gaps := values("log_gap_recovered."):
        out["healed.gap_recovered"] = sum(gaps) / len(gaps)
    if "tokens_trained" in h:
        out["healed.tokens"] = float(h["tokens_trained"])
    return out


def add_healed(rows: list[PlanRow], client: Any) -> None:
    """Put each healed trial's healing numbers beside its pruned ones (``healed.*`` metrics)."""
    healed = healed_metrics([r.run_id for r in rows], client=client) if rows else {}
    for r in rows:
        if r.run_id in healed:
            r.metrics.update(healed_columns(healed[r.run_id]))


def keep_run(cfg: CompareConfig, params: dict[str, str], tags: dict[str, str]) -> bool:
    """Cheap filters on params, before any artifact is downloaded."""
    if cfg.models and params.get("model", tags.get("model")) not in cfg.models:
        return False
    if cfg.methods and params.get("method") not in cfg.methods:
        return False
    if cfg.estimators and params.get("estimator") not in cfg.estimators:
        return False
    return not (cfg.granularities and params.get("granularity") not in cfg.granularities)


def keep_row(cfg: CompareConfig, r: PlanRow) -> bool:
    """The filters only a row's plan can answer (k, and the model id the plan records)."""
    if cfg.n_prune and r.n_prune not in cfg.n_prune:
        return False
    return not (cfg.models and r.model not in cfg.models)
