"""``blockprune evaluate``: measure a model, dense or with a plan applied, and print a table.

Perplexity on a held-out split (paper style, BOS-first chunks), parameters, optionally lm-eval
tasks from the bundled data, prefill/decode speed and generation samples. With ``--plan`` the
dense model is measured too, so the table shows what the plan costs. Results go to MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.windows import heldout_windows, split_documents
from blockprune.env import apply_env_defaults
from blockprune.evaluation.lm_eval_tasks import resolve_task_names
from blockprune.jobs.entry import run_entry
from blockprune.models.zoo import load_model, resolve_model
from blockprune.pipeline.config import EvalSettings
from blockprune.pipeline.space import check_writable_file
from blockprune.selection.plan import PrunePlan
from blockprune.tracking.tracker import Tracker

apply_env_defaults()

EPILOG = """examples:
  blockprune evaluate --model smollm2-135m
  blockprune evaluate --model smollm2-135m --plan plan.json --tasks piqa,arc_easy --limit 200 --latency
  blockprune evaluate --pruned pruned/smollm2-135m-shortgpt-layer-4 --corpus lambada
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="blockprune evaluate", description=__doc__, epilog=EPILOG,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="bundled name, HF folder or hub id (the dense model)")
    src.add_argument("--pruned", help="a folder written by save_pruned / --save-dir")
    p.add_argument("--plan", default=None, help="plan JSON to apply to --model before measuring")
    p.add_argument("--corpus", default="wikipedia", help="held-out split of this corpus for perplexity")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--tasks", default="", help="comma-separated lm-eval tasks (piqa, arc_easy, winogrande, …)")
    p.add_argument("--limit", type=int, default=None, help="lm-eval: items per task")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--latency", action="store_true", help="prefill/decode tokens/s")
    p.add_argument("--samples", action="store_true", help="greedy generations for fixed prompts")
    p.add_argument("--rolling-docs", type=int, default=0,
                   help="also lm-eval-style rolling word/byte perplexity on this many held-out documents")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--tracking-uri", default=None)
    p.add_argument("--experiment", default="blockprune")
    p.add_argument("--no-tracking", action="store_true")
    p.add_argument("--json-out", default=None, help="write the results as JSON here")
    p.add_argument("--quiet", action="store_true")
    return p


def measure(model: Any, tokenizer: Any, windows: Any, args: argparse.Namespace,
            held_docs: list[str] | None = None) -> dict[str, Any]:
    """The pipeline's measurements of one model, flattened for the table (samples under ``"samples"``)."""
    from blockprune.pipeline.evaluate import measure_model

    ev = EvalSettings(tasks=tuple(t for t in args.tasks.split(",") if t), limit=args.limit,
                      batch_size=args.batch_size, latency=args.latency, samples=args.samples)
    result = measure_model(model, tokenizer, windows, ev, held_docs, progress=not args.quiet)
    return {**result.metrics, **({"samples": result.samples} if result.samples else {})}


def _load(args: argparse.Namespace, plan: Any = None) -> tuple[list[tuple[str, Any]], Any, str]:
    """[(label, model)…], tokenizer, model id; raises on bad input before evaluation work."""
    from blockprune.models.apply import apply_plan, load_pruned, read_plan

    if args.pruned:
        from transformers import AutoTokenizer

        plan = read_plan(args.pruned)
        print(f"[blockprune] input checked; loading the pruned model {args.pruned} ({args.dtype})", flush=True)
        return [(f"pruned ({plan.method}, {plan.granularity} {list(plan.blocks)})",
                 load_pruned(args.pruned, dtype=args.dtype))], AutoTokenizer.from_pretrained(args.pruned), plan.model_id
    print(f"[blockprune] input checked; loading the model {args.model} ({args.dtype})", flush=True)
    model, tok, _ = load_model(args.model, dtype=args.dtype)
    models = [("dense", model)]
    if plan is not None:
        import copy

        models.append((f"pruned ({plan.method}, {plan.granularity} {list(plan.blocks)})",
                       apply_plan(copy.deepcopy(model), plan)))
    return models, tok, args.model


def read_checked_plan(args: argparse.Namespace) -> Any:
    """``--plan`` read and checked against ``--model``'s config (model id, revision, layer count): no weights."""
    if not args.plan:
        return None
    from transformers import AutoConfig

    from blockprune.models.apply import check_plan_for_config

    plan = PrunePlan.load(args.plan)
    resolved = resolve_model(args.model)
    check_plan_for_config(plan, resolved.name, resolved.revision, AutoConfig.from_pretrained(resolved.path),
                          f"plan file {args.plan}")
    return plan


def format_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    keys = sorted({k for _, r in rows for k, v in r.items() if isinstance(v, (int, float))},
                  key=lambda k: (k != "ppl", k.startswith("latency"), k))
    width = max(len(k) for k in keys) + 2
    lines = [f"{'':<{width}}" + "".join(f"{label[:28]:>30}" for label, _ in rows)]
    for k in keys:
        cells = []
        for _, r in rows:
            v = r.get(k)
            cells.append(f"{'–':>30}" if v is None else f"{v:>30,.0f}" if k.startswith("params") else f"{v:>30.4f}")
        lines.append(f"{k:<{width}}" + "".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:

    tracker = Tracker(args.tracking_uri, args.experiment, enabled=not args.no_tracking)
    tracker.check()
    if args.tasks:

        resolve_task_names([t for t in args.tasks.split(",") if t])
    if args.json_out:

        check_writable_file(args.json_out, "--json-out")
    if args.pruned:
        from blockprune.models.apply import read_plan

        read_plan(args.pruned)
    else:

        resolve_model(args.model)  # an unknown model is bad input, found before anything loads
    plan = read_checked_plan(args)
    corpus = load_corpus(args.corpus)
    models, tok, model_id = _load(args, plan)
    windows = heldout_windows(tok, corpus, args.seq_len, args.eval_windows)

    held = split_documents(corpus)[1][: args.rolling_docs] if args.rolling_docs else None
    rows = [(label, measure(m, tok, windows, args, held)) for label, m in models]
    print(format_table(rows))
    if len(rows) == 2:
        print(f"perplexity ×{rows[1][1]['ppl'] / rows[0][1]['ppl']:.3f}, "
              f"parameters −{1 - rows[1][1]['params_total'] / rows[0][1]['params_total']:.1%}")
    with tracker.run(f"evaluate {model_id}", params={"model": model_id, "plan": args.plan or args.pruned or "none",
                                                     "corpus": args.corpus, "seq_len": args.seq_len,
                                                     "eval_windows": args.eval_windows, "tasks": args.tasks,
                                                     "limit": args.limit},
                     tags={"blockprune.kind": "evaluate"}) as run_id:
        for label, r in rows:
            prefix = "dense" if label == "dense" else "pruned"
            tracker.log_metrics({f"{prefix}.{k}": v for k, v in r.items() if isinstance(v, (int, float))})
            if "samples" in r:
                tracker.log_dict(r["samples"], f"samples_{prefix}.json")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({label: r for label, r in rows}, f, indent=1, default=str)
    if run_id:
        print(f"[blockprune] MLflow: {tracker.describe(run_id)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_entry(run, build_parser().parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
