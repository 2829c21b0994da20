"""What every ``blockprune`` entry point does around its work: logging set-up and clean errors.

Only :class:`~blockprune.errors.BlockpruneError` (bad input, a missing resource) is turned into one line
on stderr with exit code 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from blockprune.errors import BlockpruneError

NOISY_LOGGERS = ("httpx", "urllib3", "alembic", "mlflow", "datasets", "filelock")


def run_entry(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return run(args)
    except BlockpruneError as e:
        print(f"blockprune: error: {e}", file=sys.stderr)
        return 2
