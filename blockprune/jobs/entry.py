"""What every ``blockprune`` entry point does around its work: logging set-up, clean errors, clean stops.

Only :class:`~blockprune.errors.BlockpruneError` (bad input, a missing resource) is turned into one line
on stderr with exit code 2; any other exception is a bug and keeps its traceback. SIGTERM (``kill``,
``ray job stop``, a scheduler's pre-emption) and SIGINT (Ctrl-C) unwind the job like an exception: open
MLflow runs end KILLED with the signal as ``blockprune.end_reason``, a capture in progress removes its
partial folder, and the process exits 128 + the signal number after one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from blockprune.errors import BlockpruneError
from blockprune.tracking.tracker import JobInterrupted

NOISY_LOGGERS = ("httpx", "urllib3", "alembic", "mlflow", "datasets", "filelock")


def _raise_interrupted(signum: int, frame: Any) -> None:
    """The first SIGTERM unwinds the job; a second one, during that clean-up, kills at once (the default)."""

    signal.signal(signum, signal.SIG_DFL)
    raise JobInterrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_cleanly_on_sigterm() -> Iterator[None]:
    """SIGTERM raises :class:`~blockprune.tracking.tracker.JobInterrupted` in the main thread while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_entry(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:

    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its own level when it is imported
    if getattr(args, "quiet", False):  # --quiet: no progress bars, also not transformers' "Loading weights"
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        with stop_cleanly_on_sigterm():
            return run(args)
    except BlockpruneError as e:
        print(f"blockprune: error: {e}", file=sys.stderr)
        return 2
    except JobInterrupted as e:
        print(f"blockprune: stopped by {e.signal_name}", file=sys.stderr)
        return 128 + int(signal.Signals[e.signal_name])
    except KeyboardInterrupt:
        print("blockprune: stopped by SIGINT", file=sys.stderr)
        return 128 + int(signal.SIGINT)
