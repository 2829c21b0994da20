"""Prefill and decode speed-up from removing 25 % of the decoder layers, next to the compute removed.

Why: the paper claims (ShortGPT, EntroDrop, MI-PRUN) are about accuracy at a given fraction of
layers removed; what a user buys is latency. This measures both sides on one model: the fraction of
parameters/FLOPs per token that the removed layers carried, and the prefill and decode throughput
actually measured, dense vs pruned.

FLOPs per token follow blockprune.evaluation.cost: prefill counts the output projection once per
prompt (only the last position's logits are computed, as in ``generate``), decode once per token;
attention FLOPs use the mean causal context.

Which layers go does not change speed, so the benchmark removes a fixed contiguous run ending just
before the last layer (where the criteria usually point). Dense and pruned are measured in
alternating rounds on the same model object (the removed layers are put back between rounds), so
background load on a shared machine hits both alike; each variant reports the median of all its
timed runs.

  python benchmarks/bench_pruned_speed.py                      # real SmolLM2-135M, CPU defaults
  python benchmarks/bench_pruned_speed.py --threads 1 --repeats 1 --rounds 8
                                                               # shared CPU: fine-grained alternation
  python benchmarks/bench_pruned_speed.py --device cuda        # on a GPU (1024 in / 128 out)
  python benchmarks/bench_pruned_speed.py --shape llama-2-7b --dtype bfloat16 --device cuda
                                                               # random weights, real shapes

``--shape`` builds a randomly initialised model of a known shape: speed does not depend on weight
values, and the bundled GGUF files cannot travel to a GPU machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from blockprune.evaluation.cost import (  # noqa: E402
    LatencyResult,
    count_parameters,
    decode_flops_per_token,
    measure_latency,
    prefill_flops_per_token,
)
from blockprune.models.apply import apply_plan  # noqa: E402
from blockprune.selection.plan import PrunePlan  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "bench_pruned_speed.json"

# Real shapes for random-init runs (Hugging Face config values).
SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": dict(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "llama-2-7b": dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
}


def load(args: argparse.Namespace) -> tuple[nn.Module, int, str]:
    """(model in eval mode on the device, vocab size, description of the weights)."""
    dtype = getattr(torch, args.dtype)
    if args.shape:
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        config = LlamaConfig(**SHAPES[args.shape])
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        weights = f"random init, {args.shape} shape"
    else:
        from blockprune.models.zoo import load_model

        model = load_model(args.model, dtype=args.dtype)[0]
        weights = f"pretrained {args.model}"
    model = model.to(args.device).eval()
    return model, int(model.config.vocab_size), weights


def layers_to_remove(n_layers: int, fraction: float) -> list[int]:
    """round(fraction · L) contiguous layers, ending just before the last layer."""
    k = max(1, round(fraction * n_layers))
    if k >= n_layers:
        raise ValueError(f"cannot remove {k} of {n_layers} layers")
    end = n_layers - 1
    return list(range(end - k, end))


def pruned_copy(model: nn.Module, drop: list[int]) -> nn.Module:
    """The model with ``drop`` removed by the real code path (``apply_plan`` on a deep copy)."""
    source = getattr(model.config, "blockprune_source", None) or {}
    plan = PrunePlan(model_id=source.get("model_id", "random-init"), revision=source.get("revision"),
                     n_blocks=len(model.model.layers), blocks=tuple(drop), method="bench")
    return apply_plan(copy.deepcopy(model), plan)


def compute_summary(model: nn.Module, prompt_len: int, gen_len: int) -> dict[str, float]:
    """Parameters and FLOPs per token at the benchmark's mean attention contexts."""
    counts = count_parameters(model)
    return {
        "n_layers": counts["n_layers"],
        "params_total": counts["total"],
        "params_per_token_matmul": counts["per_token_matmul"],
        "flops_per_token_prefill": prefill_flops_per_token(model, prompt_len),
        "flops_per_token_decode": decode_flops_per_token(model, prompt_len, gen_len),
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }


def merge(runs: list[LatencyResult]) -> dict[str, Any]:
    """Medians over every timed run of every round."""
    prefill = [t for r in runs for t in r.prefill_s_all]
    decode = [t for r in runs for t in r.decode_s_all]
    first = runs[0]
    p, d = statistics.median(prefill), statistics.median(decode)
    return {
        "prefill_s": p,
        "decode_s": d,
        "prefill_tokens_per_s": first.batch_size * first.prompt_len / p,
        "decode_tokens_per_s": first.batch_size * first.gen_len / d,
        "prefill_s_all": prefill,
        "decode_s_all": decode,
        "peak_memory_bytes": max(r.peak_memory_bytes for r in runs),
        "memory_kind": first.memory_kind,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="bundled model name or HF folder")
    ap.add_argument("--shape", choices=sorted(SHAPES), help="random-init model of this shape instead")
    ap.add_argument("--fraction", type=float, default=0.25, help="fraction of layers to remove")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prompt-len", type=int, default=None, help="default 1024 on CUDA, 256 on CPU")
    ap.add_argument("--gen-len", type=int, default=None, help="default 128 on CUDA, 32 on CPU")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per round")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternating dense/pruned rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, vocab, weights = load(args)
    n_layers = count_parameters(model)["n_layers"]
    drop = layers_to_remove(n_layers, args.fraction)
    kw = dict(
        prompt_len=args.prompt_len,
        gen_len=args.gen_len,
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
    )

    variants = {"dense": model, "pruned": pruned_copy(model, drop)}
    runs: dict[str, list[LatencyResult]] = {"dense": [], "pruned": []}
    summaries: dict[str, dict[str, float]] = {}
    for rnd in range(args.rounds):
        for variant in ("dense", "pruned") if rnd % 2 == 0 else ("pruned", "dense"):
            active = variants[variant]
            if args.device != "cpu":  # only the measured model on the accelerator: its own peak memory
                for name, m in variants.items():
                    m.to(args.device if name == variant else "cpu")
            res = measure_latency(active, vocab, **kw)
            runs[variant].append(res)
            summaries.setdefault(variant, compute_summary(active, res.prompt_len, res.gen_len))
            print(
                f"round {rnd + 1}/{args.rounds} {variant:6s} prefill {res.prefill_tokens_per_s:9.1f} tok/s "
                f"decode {res.decode_tokens_per_s:7.1f} tok/s",
                file=sys.stderr,
                flush=True,
            )

    dense, pruned = merge(runs["dense"]), merge(runs["pruned"])
    sd, sp = summaries["dense"], summaries["pruned"]
    first = runs["dense"][0]
    result = {
        "benchmark": "bench_pruned_speed",
        "weights": weights,
        "device": first.device,
        "device_name": torch.cuda.get_device_name() if first.device.startswith("cuda") else cpu_name(),
        "threads": first.threads,
        "dtype": first.dtype,
        "batch_size": first.batch_size,
        "prompt_len": first.prompt_len,
        "gen_len": first.gen_len,
        "repeats_per_round": args.repeats,
        "rounds": args.rounds,
        "removed_layers": drop,
        "removed_fraction_of_layers": len(drop) / n_layers,
        "variants": {"dense": {**sd, **dense}, "pruned": {**sp, **pruned}},
        "compute_removed": {
            "params_per_token": 1 - sp["params_per_token_matmul"] / sd["params_per_token_matmul"],
            "flops_per_token_prefill": 1 - sp["flops_per_token_prefill"] / sd["flops_per_token_prefill"],
            "flops_per_token_decode": 1 - sp["flops_per_token_decode"] / sd["flops_per_token_decode"],
            "weights_bytes": 1 - sp["weights_bytes"] / sd["weights_bytes"],
        },
        "speedup": {
            "prefill": pruned["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"],
            "decode": pruned["decode_tokens_per_s"] / dense["decode_tokens_per_s"],
        },
        # per round, pruned vs dense measured back to back: robust to slow drifts of background load
        "speedup_paired_median": {
            "prefill": statistics.median(
                d.prefill_s / p.prefill_s for d, p in zip(runs["dense"], runs["pruned"], strict=True)
            ),
            "decode": statistics.median(
                d.decode_s / p.decode_s for d, p in zip(runs["dense"], runs["pruned"], strict=True)
            ),
        },
        "ideal_speedup_from_flops": {
            "prefill": sd["flops_per_token_prefill"] / sp["flops_per_token_prefill"],
            "decode": sd["flops_per_token_decode"] / sp["flops_per_token_decode"],
        },
        "torch": torch.__version__,
        "wall_s": time.perf_counter() - t0,
    }
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return result


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else whatever platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_table(r: dict[str, Any]) -> None:
    mem = "peak RSS MB" if r["variants"]["dense"]["memory_kind"] == "rss_peak" else "peak alloc MB"
    print(
        f"\n{r['weights']} on {r['device']} ({r['device_name'] or '?'}, {r['threads']} threads), {r['dtype']}, "
        f"batch {r['batch_size']}, prompt {r['prompt_len']}, generate {r['gen_len']}; "
        f"median of {r['rounds']}×{r['repeats_per_round']} runs"
    )
    head = (
        f"{'variant':8s} {'layers':>6s} {'params/tok M':>12s} {'GFLOP/tok pre':>13s} {'GFLOP/tok dec':>13s} "
        f"{'prefill tok/s':>13s} {'decode tok/s':>12s} {'weights MB':>10s} {mem:>13s}"
    )
    print(head)
    print("-" * len(head))
    for name in ("dense", "pruned"):
        v = r["variants"][name]
        print(
            f"{name:8s} {v['n_layers']:>6d} {v['params_per_token_matmul'] / 1e6:>12.1f} "
            f"{v['flops_per_token_prefill'] / 1e9:>13.3f} {v['flops_per_token_decode'] / 1e9:>13.3f} "
            f"{v['prefill_tokens_per_s']:>13.1f} {v['decode_tokens_per_s']:>12.1f} "
            f"{v['weights_bytes'] / 2**20:>10.0f} {v['peak_memory_bytes'] / 2**20:>13.0f}"
        )
    if mem.startswith("peak RSS"):
        print("(peak RSS is process-wide: it includes the dense model kept beside the pruned copy)")
    c, s, i = r["compute_removed"], r["speedup"], r["ideal_speedup_from_flops"]
    print(
        f"\nremoved {len(r['removed_layers'])} layers {r['removed_layers'][0]}–{r['removed_layers'][-1]} "
        f"({r['removed_fraction_of_layers']:.1%} of layers)"
    )
    print(
        f"compute removed: params/token {c['params_per_token']:.1%}, FLOPs/token prefill "
        f"{c['flops_per_token_prefill']:.1%}, decode {c['flops_per_token_decode']:.1%}"
    )
    sp = r["speedup_paired_median"]
    print(
        f"speed-up measured: prefill ×{s['prefill']:.3f}, decode ×{s['decode']:.3f}   "
        f"(median of per-round ratios: ×{sp['prefill']:.3f}, ×{sp['decode']:.3f}; "
        f"FLOP-proportional ideal: ×{i['prefill']:.3f}, ×{i['decode']:.3f}; "
        f"layer-count ideal: ×{1 / (1 - r['removed_fraction_of_layers']):.3f})"
    )


if __name__ == "__main__":
    main()
