"""``blockprune calibrate`` / ``python -m blockprune.jobs.calibrate``: one model, one or more trials.

Captures activations once (or reuses the store), scores, selects, prunes, evaluates perplexity
before and after, and logs to MLflow. The ``python -m`` form is what ``ray job submit`` runs.

A job can also come from ``--config job.yaml`` (the same schema as a sweep spec's sections, with one
``model`` and one ``calibration``); flags given on the command line override the file. Trial flags
(--method, --prune, --prune-ratio, --granularity, --estimator, --estimator-params, --s-start, --stage-rule) replace
the file's trials as a whole.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from blockprune.env import apply_env_defaults
from blockprune.jobs.entry import run_entry
from blockprune.models.adapters import adapter_for_config
from blockprune.models.zoo import resolve_model
from blockprune.pipeline.config import (
    CALIBRATION_DEFAULTS,
    EvalSettings,
    JobConfig,
    SpecError,
    TrackingSpec,
    parse_job,
    parse_tracking,
    read_yaml,
)
from blockprune.pipeline.results import ResultsFolder, default_results_dir
from blockprune.pipeline.space import check_writable_dir, check_writable_file
from blockprune.selection import n_prune_from_ratio
from blockprune.selection.methods import METHODS
from blockprune.tracking.tracker import Tracker

apply_env_defaults()

_CAL = CALIBRATION_DEFAULTS
_EV = EvalSettings()

EPILOG = """examples:
  blockprune calibrate --model smollm2-135m --corpus wikipedia --method shortgpt --prune 4
  blockprune calibrate --model gemma3-270m --corpus lambada --method entrodrop --estimator entropy.knn --prune 3
  blockprune calibrate --model smollm2-135m --method mi_fbs --prune 6 --save-dir pruned/
  blockprune calibrate --model ./my-hf-folder --corpus data.jsonl --text-field text --method shortgpt --prune 8
  blockprune calibrate --config job.yaml --prune 8          # a job file, one value overridden

methods:
""" + "\n".join(f"  {name:<20}{METHODS.get(name).description}" for name in METHODS.names())

TRIAL_FLAGS = ("method", "prune", "prune_ratio", "granularity", "estimator", "estimator_params", "s_start",
               "stage_rule")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="blockprune calibrate", description=__doc__, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="job file (YAML/JSON) in the shared schema; flags override it")
    p.add_argument("--model", default=None,
                   help="bundled name (smollm2-135m, gemma3-270m), HF folder or hub id (required unless in --config)")
    p.add_argument("--corpus", default=None,
                   help="wikipedia (default) | lee-news | lambada | wikitext-2/c4/alpaca/pg19 (online) | "
                        "path to .txt/.jsonl/.arrow")
    p.add_argument("--text-field", default=None, help="JSONL/arrow field holding the text (default: text)")
    p.add_argument("--method", action="append", default=None,
                   help="selection method; repeat for several trials on one capture (default: shortgpt)")
    p.add_argument("--prune", type=int, action="append", default=None,
                   help="number of blocks to remove; repeat for several (default: 4)")
    p.add_argument("--prune-ratio", type=float, default=None, help="fraction of blocks to remove, rounded up")
    p.add_argument("--granularity", choices=("layer", "attention", "mlp"), default=None,
                   help="remove whole layers (default), or only their attention / MLP sub-blocks")
    p.add_argument("--estimator", default=None, help="estimator name, e.g. entropy.knn, mi.ksg (method default)")
    p.add_argument("--estimator-params", default=None, help='JSON object, e.g. \'{"k": 5, "p": 16}\'')
    p.add_argument("--s-start", type=int, default=None,
                   help="EntroDrop: protect blocks below this one (and the last), overriding the stage rule")
    p.add_argument("--stage-rule", choices=("fixed", "curve"), default=None,
                   help="EntroDrop: which blocks count as the entropy-decreasing stage, never dropped. 'fixed' "
                        "(default): blocks 0, 1 and the last, as the released code; 'curve': detected from the "
                        "ΔH curve (blockprune's reading of the paper's prose)")
    p.add_argument("--n-samples", type=int, default=None, help=f"calibration windows (default {_CAL['n_samples']})")
    p.add_argument("--seq-len", type=int, default=None,
                   help=f"tokens per window, BOS included (default {_CAL['seq_len']})")
    p.add_argument("--seed", type=int, default=None, help="calibration (and sampling) seed (default 0)")
    p.add_argument("--sample-rows", type=int, default=None, help="tokens kept per boundary in the store (default 4096)")
    p.add_argument("--store-dtype", choices=("float16", "float32"), default=None, help="store dtype (default float16)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (default 4)")
    p.add_argument("--store-root", default=None, help="where activation stores live (default $BLOCKPRUNE_CACHE/stores)")
    p.add_argument("--eval-corpus", default=None, help="held-out corpus for perplexity (default: --corpus)")
    p.add_argument("--eval-windows", type=int, default=None,
                   help=f"held-out windows for perplexity (default {_EV.windows})")
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval tasks, e.g. piqa,arc_easy")
    p.add_argument("--limit", type=int, default=None, help="lm-eval: items per task")
    p.add_argument("--latency", action="store_true", default=None, help="measure prefill/decode tokens/s of each model")
    p.add_argument("--samples", action="store_true", default=None, help="log greedy generations for fixed prompts")
    p.add_argument("--rolling-docs", type=int, default=None,
                   help="also lm-eval-style rolling word/byte perplexity on this many held-out documents")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="default float32")
    p.add_argument("--device-map", default=None, help="accelerate device_map, e.g. auto (default: CPU, one piece)")
    p.add_argument("--streamed", action=argparse.BooleanOptionalAction, default=None,
                   help="run the model layer by layer from its checkpoint (a model larger than memory); default: "
                        "only when the weights do not fit, and the log says which path was taken and why")
    p.add_argument("--save-dir", default=None, help="save each pruned model under this folder")
    p.add_argument("--heal-steps", type=int, default=None,
                   help="LoRA-heal each pruned model for this many steps after measuring it (other settings: the "
                        "'heal:' section of --config, or `blockprune heal`)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--experiment", default=None, help="MLflow experiment (default blockprune)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--plan-out", default=None,
                   help="write the (first) plan JSON here, as soon as it is selected")
    p.add_argument("--results-dir", default=None,
                   help="folder for every plan and a results.json, written before MLflow logging "
                        "(default $BLOCKPRUNE_CACHE/results/<time>-<model>-<job id>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _set(d: dict[str, Any], path: str, value: Any) -> None:
    """``d[a][b] = value`` for ``path = "a.b"``, creating sections; a ``None`` value leaves ``d`` as it is."""
    if value is None:
        return
    *parents, leaf = path.split(".")
    for key in parents:
        section = d.get(key)
        if isinstance(section, str):  # calibration: corpus-name shorthand
            section = {"corpus": section}
        d[key] = section = dict(section or {})
        d = section
    d[leaf] = value


# flag → place in the job schema
OVERRIDES = {
    "model": "model", "corpus": "calibration.corpus", "n_samples": "calibration.n_samples",
    "seq_len": "calibration.seq_len", "seed": "calibration.seed", "text_field": "text_field",
    "sample_rows": "capture.sample_rows", "store_dtype": "capture.store_dtype", "batch_size": "capture.batch_size",
    "eval_corpus": "evaluation.corpus", "eval_windows": "evaluation.windows", "tasks": "evaluation.tasks",
    "limit": "evaluation.limit", "latency": "evaluation.latency", "samples": "evaluation.samples",
    "rolling_docs": "evaluation.rolling_docs", "dtype": "dtype", "device_map": "device_map",
    "store_root": "store_root", "save_dir": "save_dir", "streamed": "streamed",
}


def _cli_trials(args: argparse.Namespace, model: str) -> list[dict[str, Any]]:
    if args.estimator_params is None:
        params: Any = {}
    else:
        try:
            params = json.loads(args.estimator_params)
        except json.JSONDecodeError as e:
            raise SpecError(f"--estimator-params is not valid JSON ({e.msg}); give an object such as "
                            "'{\"k\": 5}'") from None
        if not isinstance(params, dict):
            raise SpecError(f"--estimator-params must be a JSON object such as '{{\"k\": 5}}', got "
                            f"{args.estimator_params}")
    prunes = list(args.prune or ([] if args.prune_ratio is not None else [4]))
    if args.prune_ratio is not None:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(resolve_model(model).path)
        prunes.append(n_prune_from_ratio(args.prune_ratio, adapter_for_config(cfg).n_layers(cfg)))
    return [{"method": m, "n_prune": k, "granularity": args.granularity or "layer", "estimator": args.estimator,
             "estimator_params": params, "s_start": args.s_start, "stage_rule": args.stage_rule}
            for m in (args.method or ["shortgpt"]) for k in prunes]


def job_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The job in the shared schema: the ``--config`` file (if any) with the flags laid over it."""
    d = read_yaml(args.config, "job config") if args.config else {}
    for flag, path in OVERRIDES.items():
        _set(d, path, getattr(args, flag))
    if args.seed is not None:
        _set(d, "capture.seed", args.seed)
    if args.heal_steps is not None:
        _set(d, "heal.steps", args.heal_steps)
    if args.batch_size is not None:
        _set(d, "evaluation.batch_size", args.batch_size)
    if not d.get("model"):
        raise SpecError("--model is required (or a 'model' in --config)")
    if any(getattr(args, f) is not None for f in TRIAL_FLAGS) or not (d.get("methods") or d.get("trials")):
        for key in ("methods", "estimators", "estimator_params", "n_prune", "granularity"):
            d.pop(key, None)
        d["trials"] = _cli_trials(args, d["model"])
    return d


def job_from_args(args: argparse.Namespace) -> JobConfig:
    return parse_job(job_dict(args), f"job config {args.config}" if args.config else "the command line")


def tracking_from_args(args: argparse.Namespace) -> TrackingSpec:
    raw = read_yaml(args.config, "job config").get("tracking") if args.config else None
    spec = parse_tracking(raw)
    return TrackingSpec(uri=args.tracking_uri or spec.uri, experiment=args.experiment or spec.experiment,
                        enabled=spec.enabled and not args.no_tracking)


def run(args: argparse.Namespace) -> int:
    from blockprune.pipeline.job import JobResult, run_job

    job = job_from_args(args)
    tr = tracking_from_args(args)
    tracker = Tracker(tr.uri, tr.experiment, enabled=tr.enabled)
    if args.plan_out:
        check_writable_file(args.plan_out, "--plan-out")
    results_dir = args.results_dir or default_results_dir(job.model, tracker.job_id)
    if args.results_dir:
        check_writable_dir(args.results_dir, "--results-dir")
    out = JobResult()
    try:
        run_job(job, tracker=tracker, progress=not args.quiet, result=out,
                results=ResultsFolder(results_dir, args.plan_out))
    finally:  # what was computed is shown even when a late step failed
        for r in out.results:
            print(json.dumps({"trial": r.trial.name, "blocks": list(r.plan.blocks), "granularity": r.plan.granularity,
                              "ppl_dense": round(r.metrics["ppl_dense"], 4),
                              "ppl_pruned": round(r.metrics["ppl_pruned"], 4), "mlflow_run": r.run_id,
                              "saved_to": r.saved_to}
                             | ({"healed": {k: round(v, 4) for k, v in r.healed["metrics"].items()
                                            if k.startswith("ppl_ratio_after.")},
                                 "healed_to": r.healed["merged_path"]} if r.healed else {})))
        if out.results_dir:
            if args.plan_out and out.results:
                print(f"[blockprune] plan written to {args.plan_out}")
            print(f"[blockprune] plans and results: {out.results_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_entry(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
