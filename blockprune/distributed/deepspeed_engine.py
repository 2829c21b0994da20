"""Capture through DeepSpeed inference (``--engine deepspeed``; optional ``deepspeed`` extra).

``deepspeed.init_inference`` wraps the loaded Hugging Face model. Kernel injection is never used:
it replaces the decoder layers with fused modules, which removes the modules capture hooks on
(the layer and its mid-stream norm), and it is not implemented on CPU anyway. Without it the
engine runs the model's own modules, so the activations equal accelerate's (tested on CPU).
Tensor parallelism across GPUs needs one process per GPU (a DeepSpeed launch), which a single
Ray actor is not; a model actor therefore runs DeepSpeed with ``tp_size=1`` on its device(s).
"""

from __future__ import annotations

import importlib.util
from typing import Any


def available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def wrap_inference(model: Any, dtype: str) -> tuple[Any, Any]:
    """(engine, module): the DeepSpeed inference engine and the module capture hooks attach to."""
    if not available():
        raise ModuleNotFoundError("--engine deepspeed needs DeepSpeed: pip install 'blockprune[deepspeed]'")
    import deepspeed
    import torch

    engine = deepspeed.init_inference(model, dtype=getattr(torch, dtype), replace_with_kernel_inject=False,
                                      tensor_parallel={"tp_size": 1})
    module = engine.module
    module.eval()
    return engine, module
