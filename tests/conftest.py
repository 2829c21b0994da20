"""Shared fixtures: real bundled models loaded once per session, private caches, offline env."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import pytest

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)


class LoadedModel:
    """A real model loaded once; ``fresh()`` gives a private copy a test may prune."""

    def __init__(self, name: str) -> None:
        from blockprune.models.zoo import load_model

        self.model, self.tokenizer, self.resolved = load_model(name)

    def fresh(self) -> Any:
        return copy.deepcopy(self.model)


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return LoadedModel("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3() -> LoadedModel:
    return LoadedModel("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_store(smollm2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small real ActivationStore of smollm2-135m on the bundled Wikipedia text."""
    from blockprune.calibration.capture import CaptureSettings, capture
    from blockprune.calibration.corpora import load_corpus
    from blockprune.calibration.windows import calibration_windows
    from blockprune.models.adapters import adapter_for

    windows = calibration_windows(smollm2.tokenizer, load_corpus("wikipedia"), 8, 128, seed=0)
    path = tmp_path_factory.mktemp("stores") / "smollm2-tiny"
    settings = CaptureSettings(sample_rows=512, store_dtype="float32", batch_size=4)
    store = capture(smollm2.model, adapter_for(smollm2.model), windows, path, {"model": "smollm2-135m"}, settings,
                    progress=False)
    store.windows = windows  # type: ignore[attr-defined]
    return store


@pytest.fixture
def ids_for() -> Callable[[Any, str], Any]:
    def make(tokenizer: Any, text: str = "The history of the city of Paris begins with") -> Any:
        return tokenizer(text, return_tensors="pt").input_ids

    return make


@pytest.fixture(scope="session")
def wiki_store(smollm2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A realistic store with the CLI defaults: 32 × 256 Wikipedia windows, 4,096 sampled tokens (fp16)."""
    from blockprune.calibration.capture import CaptureSettings, capture
    from blockprune.calibration.corpora import load_corpus
    from blockprune.calibration.windows import calibration_windows
    from blockprune.models.adapters import adapter_for

    windows = calibration_windows(smollm2.tokenizer, load_corpus("wikipedia"), 32, 256, seed=0)
    path = tmp_path_factory.mktemp("stores") / "smollm2-wiki"
    return capture(smollm2.model, adapter_for(smollm2.model), windows, path, {"model": "smollm2-135m"},
                   CaptureSettings(sample_rows=4096), progress=False)


def private_mounts(cmd: list[str], tmpfs: dict[str, int] | None = None, readonly: list[str] | None = None) -> list[str]:
    """``cmd`` run in a private mount namespace with small tmpfs filesystems (path → MiB) and read-only bind
    mounts: a real full disk or read-only folder for one process, nothing changed for anyone else.

    Needs root and ``unshare`` (as ``scripts/in-netns.sh`` does); the caller checks :func:`can_mount`."""
    import shlex

    steps = [f"mount -t tmpfs -o size={mib}m blockprune-test {shlex.quote(p)}" for p, mib in (tmpfs or {}).items()]
    for p in readonly or []:
        steps += [f"mount --bind {shlex.quote(p)} {shlex.quote(p)}", f"mount -o remount,bind,ro {shlex.quote(p)}"]
    script = " && ".join([*steps, "exec " + " ".join(shlex.quote(c) for c in cmd)])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]


def can_mount() -> bool:
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def mounts() -> Callable[..., list[str]]:
    """:func:`private_mounts`; fails (not skips) where mount namespaces are unavailable, as the suite needs them."""
    assert can_mount(), "these tests need root and unshare (mount namespaces), as `make test` has"
    return private_mounts


@pytest.fixture(scope="session")
def window_store(smollm2: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A store for per-window estimators (EntroDrop's reference mode): every position, BOS row included, of
    16 × 256 Wikipedia windows of smollm2-135m (fp16, 4,096 rows)."""
    from blockprune.calibration.capture import CaptureSettings, capture
    from blockprune.calibration.corpora import load_corpus
    from blockprune.calibration.settings import for_window_pooling
    from blockprune.calibration.windows import calibration_windows
    from blockprune.models.adapters import adapter_for

    windows = calibration_windows(smollm2.tokenizer, load_corpus("wikipedia"), 16, 256, seed=0)
    path = tmp_path_factory.mktemp("stores") / "smollm2-windows"
    settings = for_window_pooling(CaptureSettings(sample_rows=4096))
    return capture(smollm2.model, adapter_for(smollm2.model), windows, path, {"model": "smollm2-135m"}, settings,
                   progress=False)
