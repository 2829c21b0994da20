"""blockprune: find, remove and measure removable transformer blocks.

The names a user needs from Python are here; the model functions import torch only when called::

    import blockprune
    plan = blockprune.PrunePlan.load("plan.json")
    blockprune.apply_plan(model, plan)
    blockprune.save_pruned(model, plan, "pruned/", tokenizer)
    model = blockprune.load_pruned("pruned/")
"""

from __future__ import annotations

from typing import Any

from blockprune.env import apply_env_defaults
from blockprune.selection.plan import PrunePlan

apply_env_defaults()

__all__ = ["PrunePlan", "apply_plan", "load_pruned", "save_pruned"]


def apply_plan(model: Any, plan: PrunePlan, **kwargs: Any) -> Any:
    """Remove the plan's blocks from ``model`` in place (checks model id, revision and layer count)."""
    from blockprune.models.apply import apply_plan as apply

    return apply(model, plan, **kwargs)


def save_pruned(model: Any, plan: PrunePlan, path: Any, tokenizer: Any = None, **kwargs: Any) -> Any:
    """Save a pruned model with its plan: layer plans as a plain Hugging Face checkpoint."""
    from blockprune.models.apply import save_pruned as save

    return save(model, plan, path, tokenizer, **kwargs)


def load_pruned(path: Any, **kwargs: Any) -> Any:
    """Reload a model saved by :func:`save_pruned` (any granularity), with its plan applied."""
    from blockprune.models.apply import load_pruned as load

    return load(path, **kwargs)
