"""The ``blockprune`` command: one sub-command per job kind, each also runnable as ``python -m``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from blockprune.env import apply_env_defaults

apply_env_defaults()

# sub-command → (module under blockprune.jobs, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "calibrate": ("calibrate", "capture, score, select, prune and evaluate one model"),
    "evaluate": ("evaluate", "measure a model, dense or with a plan applied (perplexity, lm-eval, speed)"),
    "sweep": ("sweep", "many models × calibrations × trials on a Ray cluster"),
    "heal": ("heal", "LoRA recovery fine-tuning of a pruned model (Lightning; Ray Train for N devices)"),
    "compare": ("compare", "compare prune plans logged to MLflow (table, agreement, Markdown + HTML report)"),
    "study": ("study", "the results study: every method on the bundled models → docs/RESULTS.md"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blockprune",
                                     description="Find, remove and measure removable transformer blocks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(f"blockprune.jobs.{module}")
        mod.build_parser(sub.add_parser(name, help=help_text, description=mod.__doc__, epilog=mod.EPILOG,
                                        formatter_class=argparse.RawDescriptionHelpFormatter))
    args, _ = parser.parse_known_args(argv)
    rest = list(argv if argv is not None else sys.argv[1:])
    rest.remove(args.command)
    return importlib.import_module(f"blockprune.jobs.{SUBCOMMANDS[args.command][0]}").main(rest)


if __name__ == "__main__":
    sys.exit(main())
