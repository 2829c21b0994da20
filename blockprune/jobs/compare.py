"""``blockprune compare``: prune plans side by side, read back from MLflow.

Reads the trial runs of an experiment (or of one job's parent run), their metrics and their
``plan.json`` artifacts, and shows one row per plan: blocks dropped, parameters removed,
perplexity, task accuracies, speed and calibration cost, with the best value of each column
marked. Also the agreement (Jaccard of dropped blocks) between methods that pruned the same number
of blocks of the same model. Printed in the terminal, written as Markdown (figures as PNG files
beside it) and as one self-contained HTML page (figures embedded as base64 PNG, no external assets).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from blockprune.env import apply_env_defaults
from blockprune.errors import BlockpruneError
from blockprune.tracking.compare import CompareConfig, build, render_terminal, write_report

apply_env_defaults()  # before mlflow is imported (the package imports it only when runs are read)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per plan.json is noise

EPILOG = """examples:
  blockprune compare                                   # every trial in experiment 'blockprune'
  blockprune compare --parent-run latest --out report/ # the last job only
  blockprune compare --method shortgpt --method mi_fbs --model smollm2-135m
  blockprune compare --tracking-uri http://head:5000 --experiment sweeps --granularity layer
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="blockprune compare", description=__doc__, epilog=EPILOG,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="blockprune", help="MLflow experiment (default: blockprune)")
    p.add_argument("--parent-run", default=None,
                   help="only the trials of this job: its run id, run name, or 'latest' (default: every trial)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--model", action="append", default=[], help="keep this model only (repeatable)")
    p.add_argument("--method", action="append", default=[], help="keep this selection method only (repeatable)")
    p.add_argument("--estimator", action="append", default=[], help="keep this estimator only (repeatable)")
    p.add_argument("--granularity", action="append", default=[], choices=("layer", "attention", "mlp"),
                   help="keep this granularity only (repeatable)")
    p.add_argument("--prune", type=int, action="append", default=[], help="keep plans dropping this many blocks")
    p.add_argument("--out", default="blockprune-compare", help="folder for compare.md, compare.html, figures/")
    p.add_argument("--no-files", action="store_true", help="print the table only; write nothing")
    p.add_argument("--no-figures", action="store_true", help="skip the plots (faster)")
    p.add_argument("--max-runs", type=int, default=1000, help="at most this many trial runs (newest last)")
    return p


def config_from_args(args: argparse.Namespace) -> CompareConfig:
    return CompareConfig(
        experiment=args.experiment, tracking_uri=args.tracking_uri, parent_run=args.parent_run,
        models=tuple(args.model), methods=tuple(args.method), estimators=tuple(args.estimator),
        granularities=tuple(args.granularity), n_prune=tuple(args.prune),
        out=None if args.no_files else args.out, max_runs=args.max_runs,
        figures=not args.no_figures and not args.no_files,
    )


def main(argv: Sequence[str] | None = None, echo: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    for noisy in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = config_from_args(args)
    try:
        cmp = build(cfg)
    except BlockpruneError as e:  # bad filters, no such experiment, a store that cannot be read
        print(f"blockprune compare: error: {e}", file=sys.stderr)
        return 2
    echo(render_terminal(cmp))
    if cfg.out:
        paths = write_report(cmp, cfg.out)
        echo(f"\n[blockprune] wrote {paths['markdown']} and {paths['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
