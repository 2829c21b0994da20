"""Process-wide environment defaults that must be set before heavy imports.

MLflow starts a telemetry request on import and Ray reports usage stats unless told not to; the
user's own settings always win (``setdefault``). Called from every entry point and from the
packages that import mlflow or ray.
"""

from __future__ import annotations

import os

_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def apply_env_defaults() -> None:
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)


def cache_dir() -> str:
    """Where converted models and activation stores live (``$BLOCKPRUNE_CACHE``)."""
    return os.environ.get("BLOCKPRUNE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "blockprune"))
