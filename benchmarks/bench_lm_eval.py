"""lm-eval wall time: lm-eval's HFLM vs TailLogitsHFLM (output head only where answers are scored).

The study's lm-eval suite (its tasks at its limits) on each bundled model, alternating the two scorers
``--pairs`` times so drift on a shared machine hits both alike; reports the median of per-pair speedups
and checks that every accuracy is identical.

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


def timed(model: object, tok: object, limit: int, mmlu_limit: int, tail: bool) -> tuple[float, dict]:
    from blockprune.evaluation.lm_eval_tasks import run_lm_eval

    t0 = time.perf_counter()
    res = run_lm_eval(model, tok, TASKS, limit=limit, batch_size=8, tail_logits=tail)
    res |= run_lm_eval(model, tok, ["mmlu"], limit=mmlu_limit, batch_size=8, tail_logits=tail)
    return time.perf_counter() - t0, {t: (v.get("acc"), v.get("acc_norm")) for t, v in res.items()}


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
        ratios, stock_s, tail_s, same = [], [], [], True
        for _ in range(args.pairs):
            s, acc_s = timed(model, tok, args.limit, args.mmlu_limit, tail=False)
            t, acc_t = timed(model, tok, args.limit, args.mmlu_limit, tail=True)
            stock_s.append(s)
            tail_s.append(t)
            ratios.append(s / t)
            same &= acc_s == acc_t
        rows.append({"model": name, "limit": args.limit, "mmlu_limit": args.mmlu_limit,
                     "hflm_s": statistics.median(stock_s), "tail_s": statistics.median(tail_s),
                     "speedup": statistics.median(ratios), "accuracies_identical": same,
                     "threads": torch.get_num_threads(), "load_average_1m": os.getloadavg()[0]})
    print(f"{'model':<14} {'docs/task':>9} {'HFLM s':>8} {'tail s':>8} {'speedup':>8} {'same acc':>9}")
    for r in rows:
        print(f"{r['model']:<14} {r['limit']:>9} {r['hflm_s']:>8.1f} {r['tail_s']:>8.1f} {r['speedup']:>7.2f}x "
              f"{str(r['accuracies_identical']):>9}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "tasks": TASKS + ["mmlu"]}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
