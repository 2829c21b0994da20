"""The ``blockprune`` command: one sub-command per job kind."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from blockprune.env import apply_env_defaults

apply_env_defaults()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blockprune", description="Find, remove and measure removable transformer blocks.")
    sub = parser.add_subparsers(dest="command", required=True)
    from blockprune.jobs import calibrate

    calibrate.build_parser(sub.add_parser(
        "calibrate", help="capture, score, select, prune and evaluate one model", description=calibrate.__doc__,
        epilog=calibrate.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter))
    from blockprune.jobs import compare

    compare.build_parser(sub.add_parser(
        "compare", help="compare prune plans logged to MLflow (table, agreement, Markdown + HTML report)",
        description=compare.__doc__, epilog=compare.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter))
    args, _ = parser.parse_known_args(argv)
    rest = list(argv if argv is not None else sys.argv[1:])
    rest.remove(args.command)
    if args.command == "calibrate":
        return calibrate.main(rest)
    if args.command == "compare":
        return compare.main(rest)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
