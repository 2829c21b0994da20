"""lm-eval wall time: lm-eval's HFLM vs TailLogitsHFLM (output head only where answers are scored), in
float32 and under bfloat16 autocast.

The study's lm-eval suite (its tasks, fewer documents) on each bundled model, the three scorers in turn
``--pairs`` times so drift on a shared machine hits all alike; reports median times, speedups over HFLM,
whether TailLogitsHFLM's float32 accuracies equal HFLM's, and how far bf16 accuracies move.

    python benchmarks/bench_lm_eval.py [--models smollm2-135m gemma3-270m] [--limit 20] [--pairs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_lm_eval.json"
TASKS = ["piqa", "winogrande", "arc_easy", "arc_challenge", "hellaswag", "boolq", "openbookqa", "commonsense_qa"]


def timed(model: object, tok: object, limit: int, mmlu_limit: int, tail: bool,
          mixed: str | None = None) -> tuple[float, dict]:
    from blockprune.evaluation.lm_eval_tasks import run_lm_eval

    kw = {"batch_size": 8, "tail_logits": tail, "mixed_precision": mixed}
    t0 = time.perf_counter()
    res = run_lm_eval(model, tok, TASKS, limit=limit, **kw)
    res |= run_lm_eval(model, tok, ["mmlu"], limit=mmlu_limit, **kw)
    return time.perf_counter() - t0, {t: v.get("acc_norm", v.get("acc")) for t, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--limit", type=int, default=20, help="documents per task (the study uses 50)")
    ap.add_argument("--mmlu-limit", type=int, default=1, help="documents per MMLU subject")
    ap.add_argument("--pairs", type=int, default=1)
    args = ap.parse_args()
    import torch

    from blockprune.models.zoo import load_model

    rows = []
    for name in args.models:
        model, tok, _ = load_model(name)
        model.eval()
        times: dict[str, list[float]] = {"hflm": [], "tail": [], "tail_bf16": []}
        same, moved = True, 0.0
        for _ in range(args.pairs):
            s, acc_s = timed(model, tok, args.limit, args.mmlu_limit, tail=False)
            t, acc_t = timed(model, tok, args.limit, args.mmlu_limit, tail=True)
            b, acc_b = timed(model, tok, args.limit, args.mmlu_limit, tail=True, mixed="bfloat16")
            for k, v in zip(times, (s, t, b), strict=True):
                times[k].append(v)
            same &= acc_s == acc_t
            moved = max(moved, max(abs(acc_b[k] - acc_t[k]) for k in acc_t))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"model": name, "limit": args.limit, "mmlu_limit": args.mmlu_limit,
                     "hflm_s": med["hflm"], "tail_s": med["tail"], "tail_bf16_s": med["tail_bf16"],
                     "speedup": med["hflm"] / med["tail"], "speedup_bf16": med["hflm"] / med["tail_bf16"],
                     "accuracies_identical": same, "bf16_max_task_acc_change": moved,
                     "threads": torch.get_num_threads(), "load_average_1m": os.getloadavg()[0]})
    print(f"{'model':<14} {'docs/task':>9} {'HFLM s':>7} {'tail s':>7} {'bf16 s':>7} {'speedup':>8} "
          f"{'bf16':>6} {'same acc':>9} {'bf16 max Δacc':>13}")
    for r in rows:
        print(f"{r['model']:<14} {r['limit']:>9} {r['hflm_s']:>7.1f} {r['tail_s']:>7.1f} {r['tail_bf16_s']:>7.1f} "
              f"{r['speedup']:>7.2f}x {r['speedup_bf16']:>5.2f}x {str(r['accuracies_identical']):>9} "
              f"{r['bf16_max_task_acc_change']:>13.3f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "tasks": TASKS + ["mmlu"]}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
