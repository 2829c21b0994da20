"""GPU check: the numbers a CPU machine cannot give, in one script of ≤ 8 minutes on one H100/H200.

It needs only the working tree (run it from the repository root; it puts the tree on ``sys.path``)
and torch, transformers, accelerate and numpy: no package registry, no hub, and it never imports
ray, mlflow or lm-eval (the GPU image lacks them). Models are random-init with real shapes (bf16):
speed and memory do not depend on the weight values. Sections, each timed and recorded even when
another fails:

  resident   resident capture tokens/s vs a plain forward of the same windows (target ≥ 0.9),
             peak GPU memory; a Llama-2-13B-shaped model built on the GPU
  pruned     prefill / decode tokens/s of that model, dense and with 25 % of its layers removed
  streamed   the same model saved as safetensors shards, captured layer-streamed onto the GPU
             (prefetching the next layer): tokens/s and peak GPU memory vs resident, same BI
  offload    accelerate placement split over GPU + CPU via max_memory (the model actor's k-GPU
             path with k = 1, plus CPU offload), capture tokens/s, same BI
  knn        the CUDA k-NN / KSG path of blockprune.estimators.knn vs its CPU (numpy) path:
             equal results, speed-up

    python benchmarks/gpu_check.py                 # on the GPU machine → benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --dry-run       # CPU, tiny shapes, < 1 min: checks that everything starts

The check needs ≈ 30 GB of free disk for the checkpoint (deleted at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_streamed import LLAMA2_13B  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gpu_check.json"
FORBIDDEN = ("ray", "mlflow", "lm_eval")
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=256, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=1, eos_token_id=2)
GIB = 2**30


class Check:
    """Shared state of one run: device, shapes, the model, its checkpoint, the results so far."""

    def __init__(self, dry_run: bool, workdir: Path) -> None:
        import torch

        self.dry = dry_run
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.dtype = torch.float32 if dry_run else torch.bfloat16
        self.dtype_name = "float32" if dry_run else "bfloat16"
        self.config = TINY if dry_run else LLAMA2_13B
        self.n, self.seq = (4, 32) if dry_run else (32, 512)
        self.batch = 2 if dry_run else 8
        self.work = workdir
        self.model: Any = None
        self.folder = workdir / "checkpoint"
        self.results: dict[str, Any] = {}

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def peak_reset(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak(self) -> int | None:
        import torch

        return int(torch.cuda.max_memory_allocated()) if self.device.type == "cuda" else None

    def windows(self, n: int | None = None) -> Any:
        import numpy as np

        from blockprune.calibration.windows import TokenWindows

        n = n or self.n
        ids = np.random.default_rng(0).integers(3, self.config["vocab_size"], (n, self.seq))
        ids[:, 0] = self.config["bos_token_id"]
        return TokenWindows(ids, np.arange(n) * self.seq, has_bos=True)


# ------------------------------------------------------------------------------ sections


def build_model(c: Check) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(**c.config)
    t0 = time.perf_counter()
    with torch.device(c.device):
        c.model = AutoModelForCausalLM.from_config(cfg, dtype=c.dtype).eval()
    c.sync()
    n = sum(p.numel() for p in c.model.parameters())
    return {"params": n, "seconds": time.perf_counter() - t0, "device": str(c.device), "dtype": c.dtype_name,
            "gpu": torch.cuda.get_device_name() if c.device.type == "cuda" else None}


def _plain_seconds(c: Check, windows: Any) -> float:
    import torch

    ids = torch.from_numpy(windows.input_ids)
    c.sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(ids), c.batch):
            c.model.base_model(input_ids=ids[i : i + c.batch].to(c.device), use_cache=False)
    c.sync()
    return time.perf_counter() - t0


def _capture_seconds(c: Check, windows: Any, settings: Any, store: Path) -> tuple[float, float, Any]:
    """(hooked forward seconds, whole capture() seconds incl. checksums, store)."""
    from blockprune.calibration.capture import capture
    from blockprune.models.adapters import adapter_for

    c.sync()
    t0 = time.perf_counter()
    st = capture(c.model, adapter_for(c.model), windows, store, {}, settings, progress=False)
    c.sync()
    total = time.perf_counter() - t0
    return float(st.manifest["capture_seconds"]), total, st


def resident(c: Check) -> dict[str, Any]:
    from blockprune.calibration.capture import CaptureSettings

    windows = c.windows()
    settings = CaptureSettings(batch_size=c.batch)
    tokens = windows.n_tokens
    _plain_seconds(c, c.windows(c.batch))  # warm-up: kernels, allocator
    plain, hooked, whole = [], [], []
    c.peak_reset()
    for r in range(2):
        plain.append(_plain_seconds(c, windows))
        h, w, st = _capture_seconds(c, windows, settings, c.work / f"resident-{r}")
        hooked.append(h)
        whole.append(w)
        c.results["_resident_bi"] = st.stats["layer"]["bi"]
        shutil.rmtree(st.path)
    p, h, w = statistics.median(plain), statistics.median(hooked), statistics.median(whole)
    return {"tokens": tokens, "plain_tokens_per_s": tokens / p, "capture_tokens_per_s": tokens / h,
            "capture_incl_store_commit_tokens_per_s": tokens / w, "ratio": p / h, "ratio_incl_commit": p / w,
            "target_ratio": 0.9, "met": p / h >= 0.9, "peak_gpu_bytes": c.peak(), "plain_s": plain,
            "capture_s": hooked, "capture_incl_commit_s": whole, "sample_rows": settings.sample_rows}


def save_checkpoint(c: Check) -> dict[str, Any]:
    """safetensors shards, two decoder layers each, written from the model tensor by tensor."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    c.folder.mkdir(parents=True, exist_ok=True)
    c.model.config.save_pretrained(c.folder)
    groups: dict[str, dict[str, Any]] = {}
    for name, p in c.model.state_dict().items():
        parts = name.split(".")
        key = f"layers-{int(parts[2]) // 2:03d}" if parts[:2] == ["model", "layers"] else "other"
        groups.setdefault(key, {})[name] = p
    weight_map, total = {}, 0
    for k, (_, tensors) in enumerate(sorted(groups.items())):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}, str(c.folder / fname),
                  metadata={"format": "pt"})
        for n, t in tensors.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    (c.folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return {"bytes": total, "shards": len(groups), "seconds": time.perf_counter() - t0}


def pruned(c: Check) -> dict[str, Any]:
    from blockprune.evaluation.cost import measure_latency
    from blockprune.models.apply import apply_plan
    from blockprune.selection.plan import PrunePlan

    kw = dict(prompt_len=32, gen_len=8, repeats=1, warmup=1) if c.dry else dict(repeats=3, warmup=1)
    dense = measure_latency(c.model, c.config["vocab_size"], **kw)
    n = c.config["num_hidden_layers"]
    drop = tuple(range(n - 1 - n // 4, n - 1))  # a quarter of the layers, the last one kept
    apply_plan(c.model, PrunePlan(model_id="random", n_blocks=n, blocks=drop, granularity="layer"))
    small = measure_latency(c.model, c.config["vocab_size"], **kw)
    c.model = None  # pruned: no further use
    return {"dropped_layers": list(drop), "dense": dense.to_dict(), "pruned": small.to_dict(),
            "prefill_speedup": dense.prefill_s / small.prefill_s, "decode_speedup": dense.decode_s / small.decode_s}


def streamed(c: Check) -> dict[str, Any]:
    import numpy as np

    from blockprune.calibration.capture import CaptureSettings
    from blockprune.calibration.streamed import capture_streamed

    c.model = None
    windows = c.windows()
    c.peak_reset()
    c.sync()
    t0 = time.perf_counter()
    st = capture_streamed(c.folder, None, windows, c.work / "streamed", {}, CaptureSettings(batch_size=c.batch),
                          dtype=c.dtype_name, device=c.device, prefetch=True, progress=False)
    c.sync()
    seconds = time.perf_counter() - t0
    info = st.manifest["streamed"]
    res = c.results.get("resident", {})
    bi = c.results.get("_resident_bi")
    out = {"tokens": windows.n_tokens, "seconds": seconds, "hooked_seconds": st.manifest["capture_seconds"],
           "tokens_per_s": windows.n_tokens / seconds, "peak_gpu_bytes": c.peak(), **info,
           "resident_tokens_per_s": res.get("capture_incl_store_commit_tokens_per_s"),
           "resident_peak_gpu_bytes": res.get("peak_gpu_bytes"),
           "max_bi_diff_vs_resident": float(np.max(np.abs(np.subtract(bi, st.stats["layer"]["bi"])))) if bi else None}
    shutil.rmtree(st.path)
    return out


def offload(c: Check) -> dict[str, Any]:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from blockprune.calibration.capture import CaptureSettings, capture
    from blockprune.models.adapters import adapter_for

    c.model = None
    weights = sum(os.path.getsize(f) for f in c.folder.glob("*.safetensors"))
    if c.dry:
        max_memory: dict[Any, Any] = {"cpu": weights // 3}
    else:
        max_memory = {0: int(weights * 0.4), "cpu": 3 * weights}
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(c.folder, dtype=c.dtype, device_map="auto", max_memory=max_memory,
                                                 offload_folder=str(c.work / "offload"))
    load_s = time.perf_counter() - t0
    placed: dict[str, int] = {}
    dmap = model.hf_device_map
    for i in range(c.config["num_hidden_layers"]):  # the device of the most specific entry holding layer i
        name = f"model.layers.{i}"
        key = max((k for k in dmap if k in ("", name) or name.startswith(k + ".")), key=len)
        placed[str(dmap[key])] = placed.get(str(dmap[key]), 0) + 1
    windows = c.windows()
    c.peak_reset()
    t0 = time.perf_counter()
    st = capture(model, adapter_for(model), windows, c.work / "offload-store", {}, CaptureSettings(batch_size=c.batch),
                 progress=False)
    seconds = time.perf_counter() - t0
    bi = c.results.get("_resident_bi")
    out = {"max_memory": {str(k): v for k, v in max_memory.items()}, "layers_per_device": placed, "load_s": load_s,
           "tokens": windows.n_tokens, "seconds": seconds, "tokens_per_s": windows.n_tokens / seconds,
           "peak_gpu_bytes": c.peak(),
           "max_bi_diff_vs_resident": float(np.max(np.abs(np.subtract(bi, st.stats["layer"]["bi"])))) if bi else None}
    del model
    shutil.rmtree(st.path)
    if c.device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _load_knn() -> Any:
    """blockprune.estimators.knn; without scipy (the tree backend's only need) load the module on its own."""
    try:
        from blockprune.estimators import knn

        return knn
    except ImportError:
        import importlib.util
        import types

        pkg = types.ModuleType("_bp_knn")
        pkg.__path__ = [str(ROOT / "blockprune" / "estimators")]
        sys.modules["_bp_knn"] = pkg
        for name in ("_threads", "_validate", "knn"):
            spec = importlib.util.spec_from_file_location(f"_bp_knn.{name}", ROOT / "blockprune" / "estimators" / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
        return sys.modules["_bp_knn.knn"]


def knn(c: Check) -> dict[str, Any]:
    import numpy as np

    mod = _load_knn()
    rng = np.random.default_rng(0)
    n, d = (512, 64) if c.dry else (4096, 5120)
    dev = "cpu" if c.dry else "cuda"
    a = rng.standard_normal((n, d)).astype(np.float32)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    y = (0.7 * x + 0.3 * rng.standard_normal((n, 16))).astype(np.float32)
    out: dict[str, Any] = {"n": n, "d_entropy": d, "d_ksg": 16}

    def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
        fn()  # warm-up (CUDA context, kernels)
        t0 = time.perf_counter()
        r = fn()
        return r, time.perf_counter() - t0

    r_cpu, s_cpu = timed(lambda: mod.kth_distance(a, 25, backend="numpy"))
    r_gpu, s_gpu = timed(lambda: mod.kth_distance(a, 25, backend="torch", device=dev))
    out["kth_distance"] = {"k": 25, "cpu_s": s_cpu, "gpu_s": s_gpu, "speedup": s_cpu / s_gpu,
                           "max_rel_diff": float(np.max(np.abs(r_gpu - r_cpu) / r_cpu))}
    (cx, cy), s_cpu = timed(lambda: mod.ksg_counts(x, y, 3, backend="numpy"))
    (gx, gy), s_gpu = timed(lambda: mod.ksg_counts(x, y, 3, backend="torch", device=dev))
    out["ksg_counts"] = {"k": 3, "cpu_s": s_cpu, "gpu_s": s_gpu, "speedup": s_cpu / s_gpu,
                         "rows_differing": int(np.sum((cx != gx) | (cy != gy)))}
    out["equal"] = out["kth_distance"]["max_rel_diff"] < 1e-4 and out["ksg_counts"]["rows_differing"] <= n // 1000
    return out


SECTIONS: list[tuple[str, Callable[[Check], dict[str, Any]]]] = [
    ("model", build_model), ("resident", resident), ("checkpoint", save_checkpoint), ("pruned", pruned),
    ("streamed", streamed), ("offload", offload), ("knn", knn),
]


def run(dry_run: bool, out: Path, budget_s: float, workdir: str | None) -> dict[str, Any]:
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-", dir=workdir))
    c = Check(dry_run, work)
    t_start = time.perf_counter()
    report: dict[str, Any] = {"dry_run": dry_run, "torch": torch.__version__, "sections": {}}
    try:
        import transformers

        report["transformers"] = transformers.__version__
        for name, fn in SECTIONS:
            elapsed = time.perf_counter() - t_start
            if elapsed > budget_s:
                report["sections"][name] = {"status": "skipped", "reason": f"time budget {budget_s:.0f} s spent"}
                continue
            print(f"[{elapsed:6.1f} s] {name} …", flush=True)
            t0 = time.perf_counter()
            try:
                res = fn(c)
                c.results[name] = res
                report["sections"][name] = {"status": "ok", "seconds": time.perf_counter() - t0, **res}
            except Exception as e:  # noqa: BLE001 - one failed section must not hide the others
                report["sections"][name] = {"status": "error", "seconds": time.perf_counter() - t0,
                                            "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
                print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
    finally:
        c.model = None
        shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - t_start
    report["forbidden_imports"] = sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    summary(report)
    print(f"wrote {out}")
    return report


def summary(r: dict[str, Any]) -> None:
    s = r["sections"]

    def get(sec: str, key: str, fmt: str = "{:.3g}") -> str:
        v = s.get(sec, {}).get(key)
        return fmt.format(v) if isinstance(v, (int, float)) else str(v if v is not None else s.get(sec, {}).get("status"))

    def gib(sec: str) -> str:
        v = s.get(sec, {}).get("peak_gpu_bytes")
        return f"{v / GIB:.1f}" if isinstance(v, int) else "n/a"

    print(f"\nGPU check ({'dry run, CPU' if r['dry_run'] else s.get('model', {}).get('gpu')}), {r['seconds']:.0f} s")
    rows = [
        ("resident capture / plain forward", get("resident", "ratio", "{:.3f}") + " (target ≥ 0.9)"),
        ("resident tokens/s (capture, incl. commit)", get("resident", "capture_incl_store_commit_tokens_per_s", "{:.0f}")),
        ("streamed tokens/s", get("streamed", "tokens_per_s", "{:.0f}")),
        ("peak GPU memory resident / streamed", f"{gib('resident')} / {gib('streamed')} GiB"),
        ("offload layers per device", get("offload", "layers_per_device")),
        ("offload capture tokens/s", get("offload", "tokens_per_s", "{:.0f}")),
        ("kNN speed-up (k-th distance)", str(s.get("knn", {}).get("kth_distance", {}).get("speedup"))),
        ("KSG speed-up", str(s.get("knn", {}).get("ksg_counts", {}).get("speedup"))),
        ("pruned prefill / decode speed-up", f"{get('pruned', 'prefill_speedup', '{:.2f}')} / "
                                             f"{get('pruned', 'decode_speedup', '{:.2f}')}"),
    ]
    for k, v in rows:
        print(f"  {k:<42} {v}")
    bad = [k for k, v in s.items() if v.get("status") != "ok"]
    print(f"  sections not ok: {', '.join(bad) if bad else 'none'}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, < 1 min: checks the script starts")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON report (default {RESULTS})")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip the sections left after this many seconds")
    ap.add_argument("--workdir", default=None, help="where the checkpoint and stores go (default: the temp dir)")
    a = ap.parse_args(argv)
    out = a.out or (RESULTS.with_name("gpu_check_dry_run.json") if a.dry_run else RESULTS)
    run(a.dry_run, out, a.budget_s, a.workdir)


if __name__ == "__main__":
    main()
