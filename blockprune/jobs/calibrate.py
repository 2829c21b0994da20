"""``blockprune calibrate`` / ``python -m blockprune.jobs.calibrate``: one model, one or more trials.

Captures activations once (or reuses the store), scores, selects, prunes, evaluates perplexity
before and after, and logs to MLflow. The ``python -m`` form is what ``ray job submit`` runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from blockprune.env import apply_env_defaults
from blockprune.jobs.entry import run_entry

apply_env_defaults()

EPILOG = """examples:
  blockprune calibrate --model smollm2-135m --corpus wikipedia --method shortgpt --prune 4
  blockprune calibrate --model gemma3-270m --corpus lambada --method entrodrop --estimator entropy.knn --prune 3
  blockprune calibrate --model smollm2-135m --method mi_fbs --prune 6 --save-dir pruned/
  blockprune calibrate --model ./my-hf-folder --corpus data.jsonl --text-field text --method shortgpt --prune 8

methods: shortgpt (Block Influence), sequential, reverse, relative_magnitude, angular,
         entrodrop (entropy increase), mi_greedy, mi_fbs (MI-PRUN Fast-Block-Select), mi_brute
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="blockprune calibrate", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="bundled name (smollm2-135m, gemma3-270m), HF folder or hub id")
    p.add_argument("--corpus", default="wikipedia",
                   help="wikipedia | lee-news | lambada | wikitext-2/c4/alpaca/pg19 (online) | path to .txt/.jsonl/.arrow")
    p.add_argument("--text-field", default=None, help="JSONL/arrow field holding the text (default: text)")
    p.add_argument("--method", action="append", default=None,
                   help="selection method; repeat for several trials on one capture (default: shortgpt)")
    p.add_argument("--prune", type=int, action="append", default=None,
                   help="number of blocks to remove; repeat for several (default: 4)")
    p.add_argument("--prune-ratio", type=float, default=None, help="fraction of blocks to remove, rounded up")
    p.add_argument("--granularity", choices=("layer", "attention", "mlp"), default="layer",
                   help="remove whole layers, or only their attention / MLP sub-blocks")
    p.add_argument("--estimator", default=None, help="estimator name, e.g. entropy.knn, mi.ksg (method default)")
    p.add_argument("--estimator-params", default="{}", help='JSON, e.g. \'{"k": 5, "p": 16}\'')
    p.add_argument("--s-start", type=int, default=None, help="EntroDrop: override the detected stage boundary")
    p.add_argument("--n-samples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per window, BOS included (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample-rows", type=int, default=4096, help="tokens kept per boundary in the store")
    p.add_argument("--store-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--store-root", default=None, help="where activation stores live (default $BLOCKPRUNE_CACHE/stores)")
    p.add_argument("--eval-corpus", default=None, help="held-out corpus for perplexity (default: --corpus)")
    p.add_argument("--eval-windows", type=int, default=16, help="held-out windows for perplexity")
    p.add_argument("--tasks", default="", help="comma-separated lm-eval tasks, e.g. piqa,arc_easy")
    p.add_argument("--limit", type=int, default=None, help="lm-eval: items per task")
    p.add_argument("--latency", action="store_true", help="measure prefill/decode tokens/s of each model")
    p.add_argument("--samples", action="store_true", help="log greedy generations for fixed prompts")
    p.add_argument("--rolling-docs", type=int, default=0,
                   help="also lm-eval-style rolling word/byte perplexity on this many held-out documents")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--device-map", default=None, help="accelerate device_map, e.g. auto (default: CPU, one piece)")
    p.add_argument("--save-dir", default=None, help="save each pruned model under this folder")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default="blockprune", help="MLflow experiment")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--plan-out", default=None, help="write the (first) plan JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def job_from_args(args: argparse.Namespace):  # -> JobConfig
    from blockprune.calibration.capture import CaptureSettings
    from blockprune.jobs.config import EvalSettings, JobConfig, TrialSpec
    from blockprune.selection.plan import CalibrationSettings

    try:
        est_params = json.loads(args.estimator_params)
    except json.JSONDecodeError as e:
        raise ValueError(f"--estimator-params is not valid JSON: {e}") from None
    methods = args.method or ["shortgpt"]
    prunes = args.prune or ([] if args.prune_ratio is not None else [4])
    if args.prune_ratio is not None:
        from transformers import AutoConfig

        from blockprune.models.adapters import adapter_for_config
        from blockprune.models.zoo import resolve_model
        from blockprune.selection import n_prune_from_ratio

        cfg = AutoConfig.from_pretrained(resolve_model(args.model).path)
        prunes.append(n_prune_from_ratio(args.prune_ratio, adapter_for_config(cfg).n_layers(cfg)))
    trials = tuple(
        TrialSpec(method=m, n_prune=k, granularity=args.granularity, estimator=args.estimator,
                  estimator_params=est_params, s_start=args.s_start)
        for m in methods for k in prunes
    )
    return JobConfig(
        model=args.model,
        calibration=CalibrationSettings(args.corpus, args.n_samples, args.seq_len, args.seed),
        trials=trials,
        capture=CaptureSettings(sample_rows=args.sample_rows, store_dtype=args.store_dtype,
                                batch_size=args.batch_size, seed=args.seed),
        evaluation=EvalSettings(corpus=args.eval_corpus, windows=args.eval_windows,
                                tasks=tuple(t for t in args.tasks.split(",") if t), limit=args.limit,
                                batch_size=args.batch_size, latency=args.latency, samples=args.samples,
                                rolling_docs=args.rolling_docs),
        dtype=args.dtype, device_map=args.device_map, store_root=args.store_root, save_dir=args.save_dir,
        text_field=args.text_field,
    )


def run(args: argparse.Namespace) -> int:
    from blockprune.jobs.runner import run_job
    from blockprune.tracking.tracker import Tracker

    job = job_from_args(args)
    tracker = Tracker(args.tracking_uri, args.experiment, enabled=not args.no_tracking)
    results = run_job(job, tracker, progress=not args.quiet)
    for r in results:
        print(json.dumps({"trial": r.trial.name, "blocks": list(r.plan.blocks), "granularity": r.plan.granularity,
                          "ppl_dense": round(r.metrics["ppl_dense"], 4), "ppl_pruned": round(r.metrics["ppl_pruned"], 4),
                          "mlflow_run": r.run_id, "saved_to": r.saved_to}))
    if args.plan_out and results:
        results[0].plan.save(args.plan_out)
        print(f"[blockprune] plan written to {args.plan_out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_entry(run, build_parser().parse_args(argv))

if __name__ == "__main__":
    sys.exit(main())
