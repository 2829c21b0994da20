"""``blockprune sweep`` / ``python -m blockprune.jobs.sweep``: many models × calibrations × trials on Ray.

A spec (YAML or JSON) lists models, calibration settings and trials (explicitly, or as a grid of
methods × estimators × n_prune × granularity). Each (model, calibration) pair is one job: one
capture (or a reused store), many scorings of it, one MLflow parent run with a child run per
trial; every run carries the sweep name/id and the Ray job id as tags. Jobs run concurrently;
their model actors queue on GPU resources; a failed job is reported and does not stop the
others. The exit code is 0 only when every job succeeded (1 when some failed, 2 for bad input),
so ``ray job submit`` reports SUCCEEDED exactly when the whole sweep did.

The whole spec is validated (models, corpora, methods, estimators, block counts, GPU requests)
before any actor starts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockprune.distributed.cluster import connect, shutdown
from blockprune.env import apply_env_defaults
from blockprune.jobs.entry import run_entry
from blockprune.pipeline.config import SpecError, compatible_estimators
from blockprune.pipeline.sweep_spec import SweepSpec, load_spec, parse_spec, validate_spec

if TYPE_CHECKING:
    from blockprune.distributed.sweep import SweepResult

apply_env_defaults()

__all__ = ["SUMMARY_COLUMNS", "SpecError", "compatible_estimators", "format_table", "load_spec", "main",
           "parse_spec", "summary_rows", "validate_spec"]

EPILOG = """examples:
  python -m blockprune.jobs.sweep --spec blockprune/jobs/configs/sweep-smoke.yaml
  python -m blockprune.jobs.sweep --spec sweep.yaml --address 10.0.0.1:6379 --store-uri /shared/stores
  ray job submit --working-dir . -- python -m blockprune.jobs.sweep --spec blockprune/jobs/configs/sweep-paper.yaml

spec keys: name, models, calibration, capture, methods, estimators, estimator_params, n_prune,
           granularity, trials, evaluation, placement, scoring, dtype, store_root, save_dir,
           tracking {uri, experiment, enabled}, max_concurrent_jobs
"""


def summary_rows(result: SweepResult) -> list[dict[str, Any]]:
    rows = []
    for o in result.outcomes:
        base = {"job": o.name, "status": o.status, "gpus": o.num_gpus,
                "store": "-" if o.store_reused is None else ("reused" if o.store_reused else "captured"),
                "capture_s": round(o.capture_seconds, 1), "job_s": round(o.seconds, 1)}
        if not o.results:
            rows.append({**base, "trial": "-", "blocks": "-", "ppl": "-", "exact": "-", "error": o.error or ""})
        for r in o.results:
            m = r.metrics
            rows.append({**base, "trial": r.trial.name, "blocks": ",".join(map(str, r.plan.blocks)),
                         "ppl": f"{m['ppl_dense']:.2f}→{m['ppl_pruned']:.2f}", "exact": m.get("exact_scores"),
                         "run_id": r.run_id, "error": ""})
    return rows


def format_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


SUMMARY_COLUMNS = ("job", "status", "gpus", "store", "capture_s", "trial", "blocks", "ppl", "exact", "job_s", "error")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="blockprune sweep", description=__doc__, epilog=EPILOG,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, help="sweep spec (YAML or JSON)")
    p.add_argument("--address", default=None,
                   help="Ray cluster (host:6379 or ray://host:10001); default: $RAY_ADDRESS, else a local cluster")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local cluster started here")
    p.add_argument("--store-uri", "--store-root", dest="store_uri", default=None,
                   help="where activation stores live; on a multi-node cluster a path every node and the driver see")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: spec, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default: spec or 'blockprune')")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--engine", choices=("accelerate", "deepspeed"), default=None, help="capture engine (default: spec)")
    p.add_argument("--max-concurrent", type=int, default=None, help="jobs run at once (default: all; actors queue on GPUs)")
    p.add_argument("--summary-json", default=None, help="write the summary rows here")
    p.add_argument("--dry-run", action="store_true", help="validate the spec and list the jobs; start nothing")
    p.add_argument("--progress", action="store_true", help="progress bars in the actors' logs")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    return p


def apply_overrides(spec: SweepSpec, args: argparse.Namespace) -> SweepSpec:
    if args.store_uri:
        spec = replace(spec, store_root=args.store_uri)
    tracking = spec.tracking
    if args.tracking_uri:
        tracking = replace(tracking, uri=args.tracking_uri)
    if args.experiment:
        tracking = replace(tracking, experiment=args.experiment)
    if args.no_tracking:
        tracking = replace(tracking, enabled=False)
    spec = replace(spec, tracking=tracking)
    if args.engine:
        spec = replace(spec, models=tuple(replace(m, placement=replace(m.placement, engine=args.engine))
                                          for m in spec.models))
    return spec


def run(args: argparse.Namespace) -> int:
    """Validate, connect, run, summarise; 0 only when every job succeeded (1: some failed, 2: bad input)."""
    from blockprune.distributed.sweep import run_sweep

    try:
        spec = apply_overrides(load_spec(args.spec), args)
        validate_spec(spec)
        if args.dry_run:
            for name, job, m in spec.jobs():
                print(json.dumps({"job": name, "trials": [t.name for t in job.trials],
                                  "placement": asdict(m.placement)}))
            return 0
        connect(args.address, num_cpus=args.num_cpus)
    except OSError as e:  # unreachable cluster, hub or file: as clean as the entry wrapper's errors
        print(f"blockprune: error: {e}", file=sys.stderr)
        return 2
    try:
        result = run_sweep(spec, progress=args.progress, max_concurrent_jobs=args.max_concurrent)
        rows = summary_rows(result)
        print(f"\n[blockprune] sweep {result.name!r} ({result.sweep_id}) summary")
        print(format_table(rows, SUMMARY_COLUMNS))
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps({"sweep": result.name, "sweep_id": result.sweep_id,
                                                           "ok": result.ok, "rows": rows}, indent=1, default=str))
        failed = [o.name for o in result.outcomes if o.status != "SUCCEEDED"]
        if failed:
            print(f"blockprune: {len(failed)} of {len(result.outcomes)} job(s) failed: {', '.join(failed)}",
                  file=sys.stderr)
            return 1
        return 0
    finally:
        shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    return run_entry(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
