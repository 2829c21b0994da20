"""Fixtures of the healing tests: the real SmolLM2 tokenizer, tiny random pruned checkpoints on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from heal_helpers import save_tiny_pruned, smollm2_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return smollm2_tokenizer()


@pytest.fixture(scope="session")
def tiny_pruned(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A layer plan (drop 1 and 4 of 6) saved as a stock HF checkpoint."""
    return save_tiny_pruned(tmp_path_factory.mktemp("pruned") / "layer", tokenizer)


@pytest.fixture(scope="session")
def tiny_pruned_attention(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An attention plan (skip attention in layers 0, 2, 5), reloaded with load_pruned."""
    return save_tiny_pruned(tmp_path_factory.mktemp("pruned") / "attention", tokenizer, "attention", (0, 2, 5))
