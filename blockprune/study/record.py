"""The study's MLflow records: what is logged, under which keys, and how it is read back.

Every number the report prints comes from these runs. Four kinds, told apart by ``study.kind``:

* ``calibration`` — one per model × corpus × seed: capture seconds and tokens, store checksum;
* ``selection`` — one per trial (method × estimator × granularity × n_prune) of a calibration: the plan
  (tag ``blocks``, artifact ``plan.json``), scoring seconds, exact scores computed;
* ``evaluation`` — one per *distinct* plan of a model (``plan_key``) and one for the dense model:
  held-out perplexity per corpus, parameter counts, lm-eval accuracies;
* ``baseline`` — one per set of lm-eval documents (tasks × limits, key :func:`baseline_key`): what a random
  guess and the best constant answer score on them, the floor every accuracy is read against.

A run is looked up by ``study.key``; the study resumes by skipping keys that already have a finished run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from blockprune.errors import BadInputError
from blockprune.tracking.tracker import GIT_TAG, ensure_experiment, flatten, git_commit

KIND, KEY, STUDY, FINGERPRINT = "study.kind", "study.key", "study.name", "study.fingerprint"
IDENTITY_TAGS = (KIND, KEY, STUDY, FINGERPRINT)  # set by StudyLog.start, never copied from a ledger
DENSE = "dense"
LM_EVAL_CPU = "lm_eval.cpu"  # the CPU an evaluation's lm-eval ran on: bfloat16 accuracies depend on it
RECHECK = "recheck"  # prefix: ``recheck.<stage>`` on the dense run says what a recomputation found, and where


def blocks_text(blocks: Iterable[int]) -> str:
    return ",".join(str(b) for b in sorted(blocks))


def parse_blocks(text: str) -> tuple[int, ...]:
    return tuple(int(b) for b in text.split(",") if b != "")


def plan_key(model: str, granularity: str, blocks: Iterable[int] | None) -> str:
    """Identifies what is evaluated: the same blocks chosen by two methods are one model to measure."""
    return f"{model}|{DENSE}" if blocks is None else f"{model}|{granularity}|{blocks_text(blocks)}"


def baseline_key(docs_tag: str) -> str:
    return f"baseline|{docs_tag}"


def params_text(params: Mapping[str, Any] | None) -> str:
    return ",".join(f"{k}={params[k]}" for k in sorted(params)) if params else ""


def calibration_key(model: str, corpus: str, seed: int, n_samples: int, seq_len: int,
                    capture: Mapping[str, Any] | None = None) -> str:
    """A model's own capture overrides are part of the key (the study-wide settings are in the fingerprint)."""
    return f"{model}|{corpus}|s{seed}|{n_samples}x{seq_len}" + (f"|{params_text(capture)}" if capture else "")


def method_id(method: str, estimator: str | None, params: Mapping[str, Any] | None = None) -> str:
    """``method``, ``method/estimator`` or ``method/estimator[k=v,...]``: one row of the report."""
    base = method if estimator in (None, "", "none", method) else f"{method}/{estimator}"
    return f"{base}[{params_text(params)}]" if params else base


def trial_key(cal_key: str, method: str, estimator: str | None, granularity: str, n_prune: int,
              params: Mapping[str, Any] | None = None, stage_rule: str | None = None) -> str:
    """One selection's key. EntroDrop's stage rule enters it unless it is "curve": keys made before the rule
    was a choice meant the curve detector, and those runs stay valid under that explicit setting."""
    est = (estimator or "-") + (f"[{params_text(params)}]" if params else "")
    rule = "" if method != "entrodrop" or (stage_rule or "fixed") == "curve" else f"|rule={stage_rule or 'fixed'}"
    return f"{cal_key}|{method}|{est}|{granularity}|k={n_prune}{rule}"


@dataclass
class RunRecord:
    """A run as the study reads it back (a plain copy; no MLflow objects escape this module)."""

    run_id: str
    tags: dict[str, str]
    metrics: dict[str, float]
    status: str = "FINISHED"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.tags.get(KIND, "")

    @property
    def key(self) -> str:
        return self.tags.get(KEY, "")

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "tags": self.tags, "metrics": self.metrics}


class StudyLog:
    """Reads and writes the study's runs through an ``MlflowClient`` (no fluent global state)."""

    def __init__(self, tracking_uri: str, experiment: str, study: str, fingerprint: str) -> None:
        from mlflow import MlflowClient

        ensure_experiment(tracking_uri, experiment)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        self.study, self.fingerprint = study, fingerprint
        self._commit = git_commit() or "unknown"

    def runs(self, kind: str | None = None, finished_only: bool = True) -> list[RunRecord]:
        flt = f"tags.`{FINGERPRINT}` = '{self.fingerprint}'"
        if kind:
            flt += f" and tags.`{KIND}` = '{kind}'"
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=flt, max_results=5000,
                                           page_token=token)
            for r in page:
                if finished_only and r.info.status != "FINISHED":
                    continue
                out.append(RunRecord(r.info.run_id, dict(r.data.tags), dict(r.data.metrics), r.info.status,
                                     dict(r.data.params)))
            token = page.token
            if not token:
                return out

    def by_key(self, kind: str) -> dict[str, RunRecord]:
        """Finished runs of a kind by key; the newest wins when a key was run twice."""
        runs = sorted(self.runs(kind), key=lambda r: r.metrics.get("logged_at", 0.0))
        return {r.key: r for r in runs}

    def start(self, kind: str, key: str, name: str, tags: Mapping[str, Any], params: Mapping[str, Any] | None = None,
              parent: str | None = None) -> str:
        all_tags = {KIND: kind, KEY: key, STUDY: self.study, FINGERPRINT: self.fingerprint, GIT_TAG: self._commit,
                    **{k: str(v) for k, v in tags.items()}}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        if params:

            items = list(flatten(dict(params)).items())
            from mlflow.entities import Param

            for i in range(0, len(items), 90):
                self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in items[i : i + 90]])
        return run.info.run_id

    def log(self, run_id: str, metrics: Mapping[str, float] | None = None, tags: Mapping[str, Any] | None = None,
            artifact: tuple[str, Any] | None = None, stamp: bool = True) -> None:
        """``stamp`` adds ``logged_at`` (now); an import passes False to keep the measured one it carries.
        Batches of 90: MLflow caps a batch at 100 tags."""
        from mlflow.entities import Metric, RunTag

        ts = int(time.time() * 1000)
        ms = [Metric(k, float(v), ts, 0) for k, v in (metrics or {}).items() if v is not None]
        if stamp:
            ms.append(Metric("logged_at", time.time(), ts, 0))
        ts_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(ms), len(ts_tags)), 90):
            self.client.log_batch(run_id, metrics=ms[i : i + 90], tags=ts_tags[i : i + 90])
        if artifact is not None:
            self.client.log_text(run_id, json.dumps(artifact[1], indent=1, default=str), artifact[0])

    def finish(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


SYSTEM_TAG_PREFIX = "mlflow."
ORIGIN, IMPORTED_FROM, MERGED_FROM = "study.origin_run_id", "study.imported_from", "study.merged_from"


STORE_TAGS = (ORIGIN, IMPORTED_FROM)  # where this store's copy of a run came from; not part of the measurement


def traced(r: RunRecord) -> RunRecord:
    """The run under the id it was first logged with: a run recreated from a ledger keeps that id in
    ``study.origin_run_id``. Reports and ledgers name runs by it, so the ids a reader traces stay the same
    when a study moves to another machine (each move would otherwise renumber every run)."""
    origin = r.tags.get(ORIGIN)
    return replace(r, run_id=origin) if origin else r


def export(runs: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """Plain JSON of the study's runs: every number the report prints can be traced without MLflow, and
    the list is a complete ledger (tags, params, metrics) that :func:`import_runs` turns back into runs.
    Runs go under their first id (:func:`traced`), without the store's own provenance tags, so exporting
    an imported store gives back the ledger it was imported from. Newest first (``logged_at``), as a store
    lists them, but in an order that does not depend on the store: an import keeps a key's newest run."""
    runs = sorted(runs, key=lambda r: (-r.metrics.get("logged_at", 0.0), traced(r).run_id))
    return [{"run_id": traced(r).run_id,
             "tags": {k: v for k, v in sorted(r.tags.items())
                      if not k.startswith(SYSTEM_TAG_PREFIX) and k not in STORE_TAGS},
             "params": dict(sorted(r.params.items())),
             "metrics": dict(sorted(r.metrics.items()))} for r in runs]


class LedgerMismatchError(BadInputError):
    """The exported runs belong to another grid: importing them would mix numbers measured differently."""


class ImportCounts(NamedTuple):
    """What :func:`import_runs` did with a ledger's runs."""

    imported: int  # recreated: the store had no finished run of that kind and key
    merged: int  # the store's run lacked numbers the ledger has (lm-eval measured elsewhere): added to it
    kept: int  # the store already had them, or measured the key differently (the store's numbers win)


def is_note_tag(tag: str) -> bool:
    """Tags that say where a run's numbers were (re)computed: two machines may write them differently for
    the same numbers, so they never make two runs disagree (the store's own value is kept)."""
    return tag == LM_EVAL_CPU or tag.startswith(f"{RECHECK}.")


def _extension(have: RunRecord, rec: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]] | None:
    """Metrics and tags the ledger's run adds to the store's run of the same key, or None when the two
    disagree on a number they share (two measurements: neither is silently overwritten). Timings may
    differ: the same plan measured on two machines costs two different times."""
    metrics = {k: float(v) for k, v in rec.get("metrics", {}).items()}
    shared = {k for k in set(metrics) & set(have.metrics) if k != "logged_at" and not k.endswith("_seconds")}
    if any(metrics[k] != have.metrics[k] for k in shared):
        return None
    new_metrics = {k: v for k, v in metrics.items() if k not in have.metrics and k != "logged_at"}
    tags = {k: str(v) for k, v in rec.get("tags", {}).items()
            if not k.startswith(SYSTEM_TAG_PREFIX) and k not in (*IDENTITY_TAGS, ORIGIN, GIT_TAG, IMPORTED_FROM)}
    if any(have.tags[k] != v for k, v in tags.items() if k in have.tags and not is_note_tag(k)):
        return None
    if new_metrics and metrics.get("logged_at", 0.0) > have.metrics.get("logged_at", 0.0):
        new_metrics["logged_at"] = metrics["logged_at"]  # when the newest of its numbers was measured
    return new_metrics, {k: v for k, v in tags.items() if k not in have.tags}


def import_runs(slog: StudyLog, ledger: Mapping[str, Any], source: str) -> ImportCounts:
    """Recreate a ledger's runs (``runs.json``) in ``slog``'s store.

    Why: a study takes hours of CPU and its MLflow store lives on one machine; the committed ledger lets
    another machine resume it, or rebuild the report, without redoing finished work. A run whose kind and
    key already has a finished run is not duplicated: numbers the ledger has and the store's run lacks
    (perplexity measured here, lm-eval there) are added to it, numbers both have must agree, so importing
    twice is harmless. Each new run keeps the original run id (tag ``study.origin_run_id``) and says where
    it came from."""
    if ledger.get("fingerprint") != slog.fingerprint:
        raise LedgerMismatchError(f"{source} holds grid {ledger.get('fingerprint')!r}, this spec's grid is "
                                  f"{slog.fingerprint!r}: its runs were measured with other settings")
    have = {(r.kind, r.key): r for r in sorted(slog.runs(), key=lambda r: r.metrics.get("logged_at", 0.0))}
    imported = merged = kept = 0
    for rec in ledger.get("runs", []):
        tags = {k: str(v) for k, v in rec.get("tags", {}).items() if not k.startswith(SYSTEM_TAG_PREFIX)}
        kind, key = tags.get(KIND, ""), tags.get(KEY, "")
        if not kind or not key:
            raise LedgerMismatchError(f"{source}: run {rec.get('run_id')!r} has no {KIND!r} / {KEY!r} tag")
        if (kind, key) in have:
            ext = _extension(have[(kind, key)], rec)
            if ext is None or not ext[0]:
                kept += 1
                continue
            rid = have[(kind, key)].run_id
            slog.log(rid, ext[0], ext[1] | {MERGED_FROM: source}, stamp=False)
            merged += 1
            have[(kind, key)] = RunRecord(rid, have[(kind, key)].tags | ext[1], have[(kind, key)].metrics | ext[0])
            continue
        tags = {k: v for k, v in tags.items() if k not in IDENTITY_TAGS} | {IMPORTED_FROM: source}
        tags.setdefault(ORIGIN, str(rec.get("run_id", "")))
        rid = slog.start(kind, key, key, tags, params=rec.get("params"))  # the ledger's own git commit tag wins
        slog.log(rid, rec.get("metrics", {}), stamp=False)
        slog.finish(rid)
        have[(kind, key)] = RunRecord(rid, tags, dict(rec.get("metrics", {})))
        imported += 1
    return ImportCounts(imported, merged, kept)

