"""Layer-streamed capture: memory, time and bytes read on models larger than what holds them.

(a) A Llama-2-13B-shaped checkpoint (random init, bf16, ≈26 GB) is written to disk shard by shard
    (never the whole model in memory), evicted from the page cache, then captured layer-streamed:
    8 windows × 128 tokens. Reported: peak RSS (target ≤ 4 GiB), weight bytes read (counted per
    tensor, target: each byte once) and from the kernel's I/O counters, wall time and FLOP/s.
    The checkpoint is deleted afterwards (unless --keep).
(b) qwen2.5-coder-1.5b, 32 × 256 Wikipedia tokens: resident capture (load + hooks) vs streamed
    capture of the same folder: time and peak RSS. Needs the bundled model (branch h2-qwen) or
    --qwen-path pointing to its converted HF folder.

Every measurement runs in a fresh subprocess, so ``ru_maxrss`` is that run's own peak. Run it under
the shared lock on a shared machine:

    flock /tmp/blockprune-heavy.lock python benchmarks/bench_streamed.py [--part a|b|all] [--tiny]

``--tiny`` runs (a) on a 2-layer model of the same width (minutes → seconds) to check the script.
FLOPs count the matmuls: 2 × (layer weights) per token plus attention 4 × hidden × (seq + 1)/2 per
token and layer (QKᵀ and the weighted sum over the causal average context); norms are ignored.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "bench_streamed.json"
GIB = 2**30
LLAMA2_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                  num_key_value_heads=40, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
RSS_TARGET = 4 * GIB


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def proc_io() -> dict[str, int]:
    """The kernel's I/O counters of this process (read_bytes: what came from the block device)."""
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k.strip()] = int(v)
    return out


# ------------------------------------------------------------------------- (a) 13B-shaped


def layer_shapes(c: dict[str, Any], i: int) -> dict[str, tuple[int, ...]]:
    h, f = c["hidden_size"], c["intermediate_size"]
    kv = h * c["num_key_value_heads"] // c["num_attention_heads"]
    p = f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}


def write_child(folder: str, config: dict[str, Any], layers_per_shard: int) -> dict[str, Any]:
    """Write a random-init bf16 checkpoint shard by shard; at most one shard is ever in memory."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    LlamaConfig(**config, dtype="bfloat16").save_pretrained(out)
    h, v, n = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
    groups: list[dict[str, tuple[int, ...]]] = [{"model.embed_tokens.weight": (v, h)}]
    for s in range(0, n, layers_per_shard):
        g: dict[str, tuple[int, ...]] = {}
        for i in range(s, min(s + layers_per_shard, n)):
            g |= layer_shapes(config, i)
        groups.append(g)
    groups.append({"model.norm.weight": (h,), "lm_head.weight": (v, h)})
    t0 = time.perf_counter()
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for k, group in enumerate(groups):
        name = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for key, shape in group.items():
            if len(shape) == 1:
                tensors[key] = torch.ones(shape, dtype=torch.bfloat16)
            else:
                tensors[key] = torch.empty(shape).normal_(0.0, 0.02, generator=gen).to(torch.bfloat16)
            weight_map[key] = name
            total += tensors[key].numel() * 2
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        del tensors
        fd = os.open(out / name, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the capture must read from disk, not the page cache
        os.close(fd)
        print(f"  wrote {name} ({k + 1}/{len(groups)})", file=sys.stderr, flush=True)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                 "weight_map": weight_map}))
    return {"write_s": time.perf_counter() - t0, "checkpoint_bytes": total, "shards": len(groups),
            "write_peak_rss": peak_rss()}


def stream_child(folder: str, n: int, seq: int, dtype: str, batch: int, store: str) -> dict[str, Any]:
    import numpy as np

    from blockprune.calibration.capture import CaptureSettings
    from blockprune.calibration.streamed import capture_streamed
    from blockprune.calibration.windows import TokenWindows

    cfg = json.loads((Path(folder) / "config.json").read_text())
    ids = np.random.default_rng(0).integers(3, cfg["vocab_size"], (n, seq))
    ids[:, 0] = cfg.get("bos_token_id", 1)
    windows = TokenWindows(ids, np.arange(n) * seq, has_bos=True)
    io0 = proc_io()
    t0 = time.perf_counter()
    st = capture_streamed(folder, None, windows, store, {"model": "llama2-13b-shaped-random"},
                          CaptureSettings(batch_size=batch), dtype=dtype, progress=True)
    seconds = time.perf_counter() - t0
    io1 = proc_io()
    info = st.manifest["streamed"]
    return {"seconds": seconds, "peak_rss": peak_rss(), **info,
            "disk_read_bytes": io1["read_bytes"] - io0["read_bytes"], "rchar": io1["rchar"] - io0["rchar"],
            "store_bytes": sum(f.stat().st_size for f in Path(store).glob("*.npy")), "n_rows": st.n_rows}


def capture_flops(c: dict[str, Any], n: int, seq: int) -> float:
    h, f, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = h * c["num_key_value_heads"] // c["num_attention_heads"]
    layer = 2 * h * h + 2 * kv * h + 3 * h * f
    per_token = L * (2 * layer + 4 * h * (seq + 1) / 2)
    return per_token * n * seq


def part_a(a: argparse.Namespace) -> dict[str, Any]:
    config = dict(LLAMA2_13B)
    if a.tiny:
        config["num_hidden_layers"] = 2
    root = Path(tempfile.mkdtemp(prefix="bench-streamed-", dir=a.workdir))
    folder, store = root / "llama2-13b-shaped", root / "store"
    try:
        free = shutil.disk_usage(root).free
        need = 2 * 13.1e9 * config["num_hidden_layers"] / 40 + 2 * GIB
        if free < need:
            raise SystemExit(f"{root}: {free / GIB:.0f} GiB free, the checkpoint needs {need / GIB:.0f} GiB")
        print(f"(a) writing a random {config['num_hidden_layers']}-layer Llama-2-13B-shaped bf16 checkpoint to {folder}")
        w = run_child("write", str(folder), json.dumps(config), str(a.layers_per_shard))
        print(f"(a) streamed capture, {a.n_samples} × {a.seq_len} tokens, compute {a.dtype}")
        s = run_child("stream", str(folder), str(a.n_samples), str(a.seq_len), a.dtype, str(a.batch_size), str(store))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    flops = capture_flops(config, a.n_samples, a.seq_len)
    return {"config": config, "n_samples": a.n_samples, "seq_len": a.seq_len, "dtype": a.dtype,
            "batch_size": a.batch_size, **w, **s, "flops": flops, "flop_per_s": flops / s["seconds"],
            "rss_target": RSS_TARGET, "rss_ok": s["peak_rss"] <= RSS_TARGET,
            "read_once": s["tensors_read_more_than_once"] == 0, "deleted": not a.keep}


# ------------------------------------------------------------------------- (b) qwen 1.5B


def qwen_child(mode: str, model: str, n: int, seq: int, dtype: str, store: str) -> dict[str, Any]:
    from blockprune.calibration.capture import CaptureSettings, capture
    from blockprune.calibration.corpora import load_corpus
    from blockprune.calibration.streamed import capture_streamed
    from blockprune.calibration.windows import calibration_windows
    from blockprune.models.adapters import adapter_for
    from blockprune.models.zoo import load_model, load_tokenizer, resolve_model

    resolved = resolve_model(model)
    tok = load_tokenizer(resolved)
    windows = calibration_windows(tok, load_corpus("wikipedia"), n, seq, seed=0)
    settings = CaptureSettings()
    t0 = time.perf_counter()
    load_s = 0.0
    if mode == "resident":
        m, _, _ = load_model(model, dtype=dtype)
        load_s = time.perf_counter() - t0
        st = capture(m, adapter_for(m), windows, store, {"model": model}, settings, progress=True)
    else:
        st = capture_streamed(resolved.path, None, windows, store, {"model": model}, settings, dtype=dtype,
                              progress=True)
    seconds = time.perf_counter() - t0
    out = {"mode": mode, "seconds": seconds, "load_s": load_s, "capture_s": seconds - load_s, "peak_rss": peak_rss(),
           "bi": st.stats["layer"]["bi"]}
    if mode == "streamed":
        out["weight_bytes_read"] = st.manifest["streamed"]["weight_bytes_read"]
    return out


def part_b(a: argparse.Namespace) -> dict[str, Any]:
    from blockprune.models.zoo import BUNDLED

    model = a.qwen_path or ("qwen2.5-coder-1.5b" if "qwen2.5-coder-1.5b" in BUNDLED else None)
    if model is None:
        print("(b) skipped: qwen2.5-coder-1.5b is not bundled on this branch; pass --qwen-path")
        return {"skipped": "qwen2.5-coder-1.5b not bundled here and no --qwen-path"}
    root = Path(tempfile.mkdtemp(prefix="bench-streamed-b-", dir=a.workdir))
    runs = {}
    try:
        for mode in ("resident", "streamed"):
            print(f"(b) {mode} capture of {model}, 32 × 256 tokens, {a.qwen_dtype}")
            runs[mode] = run_child("qwen", mode, model, "32", "256", a.qwen_dtype, str(root / mode))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    import numpy as np

    diff = float(np.max(np.abs(np.subtract(runs["resident"]["bi"], runs["streamed"]["bi"]))))
    return {"model": model, "dtype": a.qwen_dtype, "n_samples": 32, "seq_len": 256, "runs": runs, "max_bi_diff": diff}


# ------------------------------------------------------------------------- driver


def run_child(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(args: list[str]) -> dict[str, Any]:
    kind, rest = args[0], args[1:]
    if kind == "write":
        return write_child(rest[0], json.loads(rest[1]), int(rest[2]))
    if kind == "stream":
        return stream_child(rest[0], int(rest[1]), int(rest[2]), rest[3], int(rest[4]), rest[5])
    if kind == "qwen":
        return qwen_child(rest[0], rest[1], int(rest[2]), int(rest[3]), rest[4], rest[5])
    raise SystemExit(f"unknown child {kind}")


def print_tables(res: dict[str, Any]) -> None:
    if "a" in res:
        r = res["a"]
        print(f"\n(a) layer-streamed capture, random Llama-2-13B-shaped checkpoint "
              f"({r['config']['num_hidden_layers']} layers, bf16 on disk, compute {r['dtype']}), "
              f"{r['n_samples']} × {r['seq_len']} tokens")
        rows = [("checkpoint", f"{r['checkpoint_bytes'] / GIB:.2f} GiB in {r['shards']} shards, written in "
                 f"{r['write_s']:.0f} s (writer peak RSS {r['write_peak_rss'] / GIB:.2f} GiB)"),
                ("weight bytes read (counted)", f"{r['weight_bytes_read'] / GIB:.2f} GiB of "
                 f"{r['weight_bytes_in_checkpoint'] / GIB:.2f} GiB (final norm + LM head not needed); "
                 f"tensors read more than once: {r['tensors_read_more_than_once']}"),
                ("bytes from disk (/proc/self/io)", f"{r['disk_read_bytes'] / GIB:.2f} GiB "
                 f"(rchar {r['rchar'] / GIB:.2f} GiB)"),
                ("peak RSS", f"{r['peak_rss'] / GIB:.2f} GiB (target ≤ {r['rss_target'] / GIB:.0f} GiB: "
                 f"{'met' if r['rss_ok'] else 'MISSED'})"),
                ("wall time", f"{r['seconds']:.1f} s"),
                ("FLOP/s", f"{r['flop_per_s'] / 1e9:.1f} GFLOP/s ({r['flops'] / 1e12:.2f} TFLOP)"),
                ("store", f"{r['store_bytes'] / GIB:.2f} GiB, {r['n_rows']} rows per boundary"),
                ("hidden states", f"{r['hidden_states']}")]
        for k, v in rows:
            print(f"  {k:<32} {v}")
    if "b" in res:
        r = res["b"]
        if "skipped" in r:
            print(f"\n(b) skipped: {r['skipped']}")
            return
        print(f"\n(b) {r['model']}, {r['n_samples']} × {r['seq_len']} tokens, compute {r['dtype']}")
        print(f"  {'path':<9} {'load s':>7} {'capture s':>9} {'total s':>8} {'peak RSS GiB':>12}")
        for mode, x in r["runs"].items():
            print(f"  {mode:<9} {x['load_s']:>7.1f} {x['capture_s']:>9.1f} {x['seconds']:>8.1f} "
                  f"{x['peak_rss'] / GIB:>12.2f}")
        print(f"  largest |BI resident − BI streamed|: {r['max_bi_diff']:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("a", "b", "all"), default="all")
    ap.add_argument("--tiny", action="store_true", help="(a) with 2 layers of the 13B width: checks the script")
    ap.add_argument("--n-samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype of (a) (bf16: the stored dtype)")
    ap.add_argument("--layers-per-shard", type=int, default=2)
    ap.add_argument("--qwen-path", help="HF folder of qwen2.5-coder-1.5b when it is not bundled on this branch")
    ap.add_argument("--qwen-dtype", default="bfloat16")
    ap.add_argument("--workdir", default=None, help="where the checkpoint and stores go (default: the temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the 13B-shaped checkpoint")
    ap.add_argument("--child", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child)))
        return
    res: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if a.part in ("a", "all"):
        res["a" if not a.tiny else "a_tiny"] = part_a(a)
    if a.part in ("b", "all"):
        res["b"] = part_b(a)
    res["machine"] = {"cpus": os.cpu_count(), "when": time.strftime("%Y-%m-%d %H:%M")}
    print_tables({k: v for k, v in res.items() if k in ("a", "b")} if not a.tiny else {"a": res["a_tiny"]})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
