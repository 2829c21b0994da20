"""What every ``blockprune`` entry point does around its work: logging set-up and clean errors."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

# Errors that mean "bad input or unavailable resource": one line on stderr, exit code 2, no traceback.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ModuleNotFoundError, RuntimeError)
NOISY_LOGGERS = ("httpx", "urllib3", "alembic", "mlflow", "datasets", "filelock")


def run_entry(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return run(args)
    except USER_ERRORS as e:
        print(f"blockprune: error: {e}", file=sys.stderr)
        return 2
