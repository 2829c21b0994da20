"""``blockprune study`` / ``python -m blockprune.jobs.study``: the project's results table, docs/RESULTS.md.

Runs every method of a study spec on the bundled models (capture → select → evaluate every distinct plan),
logs each step to MLflow, then writes the report (tables, figures, plan stability, cost, a summary)
from those MLflow runs alone. Resumable: run it again and finished work is skipped; ``--max-minutes``
stops between units of work so a CPU study can run in pieces; ``--report-only`` just rewrites the report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from blockprune.env import apply_env_defaults
from blockprune.study.report import write_report
from blockprune.study.run import import_study_runs, run_study
from blockprune.study.spec import StudySpec, StudySpecError, default_spec_path, load_spec, validate
from blockprune.tracking.tracker import TrackingUnavailableError, check_store, default_tracking_uri

apply_env_defaults()

EPILOG = """examples:
  python -m blockprune.jobs.study --quick            # small grid, < 20 min on 2 CPU cores → docs/RESULTS-quick.md
  python -m blockprune.jobs.study                    # the full grid (≈10 h on 2 CPU cores) → docs/RESULTS.md
  python -m blockprune.jobs.study --max-minutes 60   # work for an hour, write the report, stop; rerun to resume
  python -m blockprune.jobs.study --report-only      # rewrite the report from MLflow
  python -m blockprune.jobs.study --import-runs docs/results/runs.json   # resume on another machine
  python -m blockprune.jobs.study --qwen             # qwen2.5-coder-1.5b, reference modes, healing → docs/RESULTS-qwen.md
  python -m blockprune.jobs.study --qwen --quick     # its small twin on the 0.5B → docs/RESULTS-qwen-quick.md

the spec: blockprune/jobs/configs/study.yaml (full) and study-quick.yaml (--quick); with --qwen,
study-qwen.yaml and study-qwen-quick.yaml. A spec's `report:` key sets its default report path.
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m blockprune.jobs.study", description=__doc__,
                                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the small grid (study-quick.yaml); the report says so")
    p.add_argument("--qwen", action="store_true",
                   help="the Qwen study (study-qwen.yaml, or study-qwen-quick.yaml with --quick)")
    p.add_argument("--spec", type=Path, default=None,
                   help="a study spec (default: study.yaml or study-quick.yaml; the Qwen ones with --qwen)")
    p.add_argument("--out", type=Path, default=None,
                   help="report path (default: the spec's `report:`, else docs/RESULTS.md, or docs/RESULTS-quick.md "
                        "for a quick spec); figures and runs.json go to a folder beside it")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the working dir)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new work after this many minutes, then write the report (resume later)")
    p.add_argument("--report-only", action="store_true", help="skip the runs; rebuild the report from MLflow")
    p.add_argument("--import-runs", type=Path, default=None, metavar="RUNS_JSON",
                   help="first recreate the finished runs of a report's runs.json (e.g. docs/results/runs.json) in "
                        "the tracking store, so a study continues on another machine; runs already there are kept, and "
                        "gain the numbers only the file has (e.g. lm-eval measured elsewhere)")
    p.add_argument("--no-report", action="store_true", help="run only; write no report")
    p.add_argument("--no-lm-eval", action="store_true",
                   help="skip lm-eval: selections, perplexity (and healing) only, e.g. on a CPU without native "
                        "bfloat16, where a bfloat16 study's lm-eval is several times slower; the report stays "
                        "partial until a run without this flag")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def default_out(spec: StudySpec) -> Path:
    """The spec's own ``report:`` path, else the small models' reports (so no spec overwrites another's)."""
    if spec.report:
        return Path(spec.report)
    return Path("docs") / ("RESULTS-quick.md" if spec.quick else "RESULTS.md")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")

    if args.max_minutes is not None and args.max_minutes <= 0:
        print("error: --max-minutes must be positive", file=sys.stderr)
        return 2
    if args.qwen and args.spec is not None:
        print("error: --qwen selects the Qwen spec; give either --qwen or --spec", file=sys.stderr)
        return 2
    try:
        spec = load_spec(args.spec or default_spec_path(args.quick, qwen=args.qwen))
        uri = args.tracking_uri or default_tracking_uri()
        check_store(uri, 5.0, "start it or fix --tracking-uri / MLFLOW_TRACKING_URI")
        validate(spec)
        if args.import_runs is not None:
            n = import_study_runs(spec, uri, args.import_runs)
            print(f"[study] imported {n.imported} runs from {args.import_runs}, added numbers to {n.merged} "
                  f"runs of the store, {n.kept} already there")
        if not args.report_only:
            run_study(spec, uri, max_minutes=args.max_minutes, lm_eval=not args.no_lm_eval)
    except (StudySpecError, TrackingUnavailableError, ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.no_report:
        out = args.out or default_out(spec)
        given = list(argv if argv is not None else sys.argv[1:])
        shown = [a for i, a in enumerate(given) if a not in ("--report-only", "--no-report", "--no-lm-eval", "-v",
                                                             "--verbose")
                 and not a.startswith("--import-runs") and (i == 0 or given[i - 1] != "--import-runs")]
        path = write_report(spec, uri, out, command=" ".join(["python -m blockprune.jobs.study", *shown]))
        print(f"[study] report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
