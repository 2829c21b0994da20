"""Shared fixtures for evaluation tests: the real SmolLM2-135M, loaded once per test module."""

from __future__ import annotations

import os
from typing import Any

import pytest

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}.items():
    os.environ.setdefault(_key, _value)


def _load_smollm2() -> tuple[Any, Any]:
    """Through the model zoo (converted once into the cached HF folder)."""
    from blockprune.models.zoo import load_model

    loaded = load_model("smollm2-135m")
    return loaded[0], loaded[1]


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) of the real SmolLM2-135M in fp32 on the CPU."""
    return _load_smollm2()
