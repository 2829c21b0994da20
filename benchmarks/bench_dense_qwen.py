"""Dense lm-eval sanity check of the bundled Qwen2.5-Coder models against answer-free baselines.

If the bundled tasks, the GGUF conversion or the model loading were wrong, accuracy would sit at the
level of guessing. Each task's accuracy is set against the two baselines computed on the very same
documents (:mod:`blockprune.evaluation.answer_baselines`: chance, and the best constant answer
position) and reported as the margin over the stronger one in units of its standard error. The
sanity bar: every task clearly above both (margin ≥ 3 standard errors).

Limits are per task (the first N validation documents) and chosen for cost on 2 CPU cores: the 1.5B
forward is ≈ 3.6 GFLOP per token and lm-eval scores every (context, choice) pair. Results are written
after each task, so a long run that is interrupted keeps what it finished.

    python benchmarks/bench_dense_qwen.py [--models qwen2.5-coder-1.5b qwen2.5-coder-0.5b]
        [--limit piqa=200 ...] [--precision bfloat16|float32]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_dense_qwen.json"
TASKS = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "boolq"]
DEFAULT_LIMITS = {"piqa": 200, "arc_easy": 200, "arc_challenge": 299, "hellaswag": 100, "winogrande": 600,
                  "boolq": 250}
# the metric the usual reports quote per task (length-normalised where answers differ in length)
METRIC = {"piqa": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "hellaswag": "acc_norm",
          "winogrande": "acc", "boolq": "acc"}


def evaluate(model_name: str, limits: dict[str, int], precision: str | None, out: dict) -> None:
    from blockprune.evaluation.answer_baselines import answer_baselines
    from blockprune.evaluation.lm_eval_tasks import run_lm_eval
    from blockprune.models.zoo import load_model

    t0 = time.perf_counter()
    model, tok, resolved = load_model(model_name, dtype="float32")
    entry = out["models"].setdefault(model_name, {"revision": resolved.revision, "tasks": {}})
    entry["load_s"] = time.perf_counter() - t0
    for task in TASKS:
        if task in entry["tasks"]:
            continue
        limit = limits[task]
        t0 = time.perf_counter()
        res = run_lm_eval(model, tok, [task], limit=limit, batch_size=8, mixed_precision=precision)[task]
        seconds = time.perf_counter() - t0
        base = answer_baselines([task], limit=limit)[task]
        metric = METRIC[task]
        acc, n = res[metric], int(res["n"])
        stderr = res[f"{metric}_stderr"]
        best = max(base["chance"], base["constant"])
        row = {"metric": metric, "acc": res.get("acc"), "acc_norm": res.get("acc_norm"),
               "acc_stderr": res.get("acc_stderr"), "acc_norm_stderr": res.get("acc_norm_stderr"),
               "n": n, "chance": base["chance"], "constant": base["constant"],
               "margin_over_best_baseline": acc - best, "margin_in_stderr": (acc - best) / stderr if stderr else math.inf,
               "seconds": seconds}
        entry["tasks"][task] = row
        RESULTS.write_text(json.dumps(out, indent=1))
        print(f"{model_name:<20} {task:<14} {metric:<8} {acc:.3f} ± {stderr:.3f} (n={n}) chance {base['chance']:.3f} "
              f"constant {base['constant']:.3f} → {row['margin_in_stderr']:+.1f} se  [{seconds:.0f} s]", flush=True)
    del model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
    ap.add_argument("--limit", nargs="*", default=[], metavar="TASK=N", help="override a task's document limit")
    ap.add_argument("--precision", choices=("bfloat16", "float32"), default="bfloat16",
                    help="forward under bfloat16 autocast (log-softmax in float32; the stored weights are bf16, so "
                         "only activations round) or plain float32")
    ap.add_argument("--resume", action="store_true", help="keep finished tasks from an earlier run's JSON")
    a = ap.parse_args()
    limits = dict(DEFAULT_LIMITS)
    for item in a.limit:
        task, _, n = item.partition("=")
        if task not in limits or not n.isdigit():
            raise SystemExit(f"--limit wants TASK=N with TASK in {TASKS}, got {item!r}")
        limits[task] = int(n)
    precision = None if a.precision == "float32" else a.precision
    out = json.loads(RESULTS.read_text()) if a.resume and RESULTS.exists() else {}
    out |= {"limits": limits, "precision": a.precision, "threads": os.cpu_count(), "metric": METRIC}
    out.setdefault("models", {})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    for name in a.models:
        evaluate(name, limits, precision, out)
    print(f"\ndense lm-eval sanity (precision {a.precision}); margin = accuracy − max(chance, constant), in standard errors")
    print(f"{'model':<20} {'task':<14} {'n':>4} {'metric':<8} {'acc':>6} {'± se':>6} {'chance':>6} {'const':>6} {'margin':>7}")
    ok = True
    for name, entry in out["models"].items():
        for task, r in entry["tasks"].items():
            acc = r[r["metric"]]
            se = r[f"{r['metric']}_stderr"]
            ok &= r["margin_in_stderr"] >= 3
            print(f"{name:<20} {task:<14} {r['n']:>4} {r['metric']:<8} {acc:>6.3f} {se:>6.3f} {r['chance']:>6.3f} "
                  f"{r['constant']:>6.3f} {r['margin_in_stderr']:>6.1f}σ")
    out["all_clearly_above_baselines"] = ok
    RESULTS.write_text(json.dumps(out, indent=1))
    print(f"every task ≥ 3 standard errors above both baselines: {ok}\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
