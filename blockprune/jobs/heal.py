"""``blockprune heal`` / ``python -m blockprune.jobs.heal``: LoRA recovery fine-tuning of a pruned model.

Trains LoRA adapters (PEFT) on the pruned model's attention/MLP projections with a causal-LM loss
on the TRAINING split of one or more corpora (every 10th document is held out, as for perplexity,
and never trained on), in a PyTorch Lightning loop; merges them and saves a model that reloads the
way the pruned one did (stock ``from_pretrained`` for layer plans, ``load_pruned`` for attention/MLP
plans). Perplexity on the held-out split is measured before and after, per corpus, and ÷ dense.

Output folder (``--out``): ``checkpoints/`` (adapter-only Lightning checkpoints, ``last.ckpt``),
``adapter/`` (PEFT adapter), ``merged/`` (the healed model), ``heal.json`` (settings and results).
Ctrl-C or SIGTERM finishes the current step, writes ``checkpoints/last.ckpt`` and exits 130;
``--resume`` continues it (same loss curve, same MLflow run).

MLflow: a child run ``heal`` under the trial that saved the pruned checkpoint (found by its
``saved_to`` tag, or given with ``--trial-run``), else a top-level run of kind ``heal``.
``--devices N`` (N > 1) or ``--ray`` trains through Ray Train on N workers (a local cluster is started
unless ``--address``/``RAY_ADDRESS`` names one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from blockprune.distributed.cluster import shutdown
from blockprune.distributed.heal import RayHealSettings, fit_on_ray, ray_preflight
from blockprune.env import apply_env_defaults
from blockprune.errors import BadInputError
from blockprune.healing.config import HealConfig, LoraSettings
from blockprune.healing.tracking import find_trial_run, read_run_file
from blockprune.jobs.entry import run_entry
from blockprune.models.zoo import resolve_model
from blockprune.tracking.tracker import Tracker

apply_env_defaults()

EPILOG = """examples:
  blockprune heal --pruned pruned/smollm2-135m-shortgpt-layer-8 --steps 200
  blockprune heal --model smollm2-135m --plan plan.json --corpus wikipedia --corpus lambada --tokens 500000
  blockprune heal --pruned pruned/x --minutes 30 --out healed/x          # stop on wall time, keep the result
  blockprune heal --pruned pruned/x --out healed/x --resume               # after Ctrl-C / a crash
  blockprune heal --pruned /shared/pruned/x --ray --workers 8 --gpus-per-worker 1 --strategy fsdp --address head:6379

budget: one optimizer step = --batch-size windows × --seq-len tokens; every training window is used at most
once, so the training split must hold steps × batch × seq-len tokens (checked before training).
"""


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="blockprune heal", description=__doc__, epilog=EPILOG,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to heal")
    src.add_argument("--pruned", default=None, help="a pruned checkpoint folder (calibrate --save-dir)")
    src.add_argument("--plan", default=None, help="a plan JSON (calibrate --plan-out); applied to --model")
    src.add_argument("--model", default=None, help="the dense model the plan is for (default: the plan's model)")
    data = p.add_argument_group("data")
    data.add_argument("--corpus", action="append", default=None,
                      help="training corpus (its training split); repeat to mix several (default: wikipedia)")
    data.add_argument("--eval-corpus", action="append", default=None,
                      help="held-out perplexity before/after on these (default: the training corpora)")
    data.add_argument("--text-field", default=None)
    data.add_argument("--seq-len", type=int, default=256)
    data.add_argument("--eval-windows", type=int, default=16, help="held-out windows per corpus for before/after")
    data.add_argument("--val-windows", type=int, default=4, help="held-out windows per corpus for the val curve")
    budget = p.add_argument_group("budget and optimisation")
    size = budget.add_mutually_exclusive_group()
    size.add_argument("--steps", type=int, default=None, help="optimizer steps (default 200)")
    size.add_argument("--tokens", type=int, default=None, help="training tokens instead of steps")
    budget.add_argument("--minutes", type=float, default=None, help="also stop after this much training time")
    budget.add_argument("--batch-size", type=int, default=8, help="windows per optimizer step, all devices (default 8)")
    budget.add_argument("--micro-batch", type=int, default=4, help="windows per forward pass per device (default 4)")
    budget.add_argument("--lr", type=float, default=2e-4)
    budget.add_argument("--warmup", type=int, default=10, help="linear warm-up steps, then cosine decay")
    budget.add_argument("--min-lr-ratio", type=float, default=0.1)
    budget.add_argument("--weight-decay", type=float, default=0.0)
    budget.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    budget.add_argument("--val-every", type=int, default=50, help="validation perplexity every N steps (0 = off)")
    budget.add_argument("--ckpt-every", type=int, default=25, help="checkpoint every N steps")
    budget.add_argument("--precision", default="auto", help="auto (bf16-mixed on GPUs with bf16, else 32-true) | "
                                                            "32-true | bf16-mixed | bf16-true | 16-mixed")
    budget.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    budget.add_argument("--seed", type=int, default=0)
    lora = p.add_argument_group("LoRA")
    lora.add_argument("--rank", type=int, default=16)
    lora.add_argument("--alpha", type=float, default=32.0)
    lora.add_argument("--dropout", type=float, default=0.0)
    lora.add_argument("--targets", default="", help="comma-separated projections, e.g. q_proj,v_proj (default: all "
                                                     "linear projections of the decoder layers)")
    dev = p.add_argument_group("devices")
    dev.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "gpu"))
    dev.add_argument("--devices", type=int, default=1, help="GPUs (or CPU processes); > 1 trains through Ray Train")
    dev.add_argument("--ray", action="store_true", help="train through Ray Train even on one device")
    dev.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: --devices)")
    dev.add_argument("--gpus-per-worker", type=float, default=None, help="default 1 on GPU machines, else 0")
    dev.add_argument("--cpus-per-worker", type=float, default=1.0)
    dev.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp"), help="Ray: DDP, or FSDP for big models")
    dev.add_argument("--max-failures", type=int, default=0, help="Ray: restart failed workers (resume from last.ckpt)")
    dev.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    out = p.add_argument_group("output and tracking")
    out.add_argument("--out", default=None, help="output folder (default healed/<model>-<method>-<granularity>-<k>)")
    out.add_argument("--resume", action="store_true", help="continue from --out's checkpoints/last.ckpt")
    out.add_argument("--no-dense", action="store_true", help="skip the dense model's perplexity (no ÷ dense ratios)")
    out.add_argument("--trial-run", default=None, help="MLflow trial run to log under (default: found by saved_to)")
    out.add_argument("--tracking-uri", default=None)
    out.add_argument("--experiment", default="blockprune")
    out.add_argument("--no-tracking", action="store_true")
    out.add_argument("--json-out", default=None, help="also write the result JSON here")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace):  # -> HealConfig

    return HealConfig(
        corpora=tuple(args.corpus or ["wikipedia"]), eval_corpora=tuple(args.eval_corpus or ()),
        text_field=args.text_field, seq_len=args.seq_len, batch_size=args.batch_size, micro_batch=args.micro_batch,
        steps=args.steps if args.steps is not None else 200, tokens=args.tokens, minutes=args.minutes, lr=args.lr,
        warmup_steps=args.warmup, min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, val_every=args.val_every, val_windows=args.val_windows,
        eval_windows=args.eval_windows, ckpt_every=args.ckpt_every, precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing, seed=args.seed,
        lora=LoraSettings(rank=args.rank, alpha=args.alpha, dropout=args.dropout,
                          targets=tuple(t.strip() for t in args.targets.split(",") if t.strip())),
    )


def _out_dir(args: argparse.Namespace, source) -> Path:  # source: HealSource
    if args.out:
        return Path(args.out)
    plan = source.plan
    return Path("healed") / f"{plan.model_id.replace('/', '__')}-{plan.method}-{plan.granularity}-{plan.n_prune}"


def run(args: argparse.Namespace) -> int:
    import torch

    from blockprune.healing.run import HealingInterrupted, check_devices, heal, local_fit, prepare_heal
    from blockprune.healing.source import resolve_source
    from blockprune.healing.trainer import last_checkpoint

    cfg = config_from_args(args)
    use_ray = args.ray or args.devices > 1 or args.workers is not None
    workers = args.workers or args.devices
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if args.accelerator != "cpu" and torch.cuda.is_available() else 0.0
    if not use_ray or not (args.address or os.environ.get("RAY_ADDRESS")):  # this machine's devices
        check_devices(("gpu" if gpus > 0 else "cpu") if use_ray else args.accelerator, workers)
    tracker = Tracker(args.tracking_uri, args.experiment, enabled=not args.no_tracking)
    tracker.check()
    source = resolve_source(pruned=args.pruned, plan=args.plan, model=args.model)
    if not args.no_dense:

        try:
            resolve_model(source.model or source.plan.model_id)
        except ValueError as e:
            raise BadInputError(f"the dense model for the ÷ dense ratios cannot be found ({e}); pass --no-dense") from None
    out_dir = _out_dir(args, source)
    resume = None
    if args.resume:
        resume = last_checkpoint(out_dir)
        if resume is None:
            raise BadInputError(f"--resume: no checkpoint at {out_dir / 'checkpoints' / 'last.ckpt'}")
    elif last_checkpoint(out_dir) is not None:
        raise BadInputError(f"{out_dir} holds checkpoints of an earlier healing: pass --resume to continue it, "
                            "or choose another --out")
    if use_ray:

        settings = RayHealSettings(workers=workers, gpus_per_worker=gpus, cpus_per_worker=args.cpus_per_worker,
                                   strategy=args.strategy, max_failures=args.max_failures, address=args.address)
        cfg.accumulation(workers)

        def fit(inputs, out, mlflow, resume_from, progress):  # noqa: ANN001, ANN202
            return fit_on_ray(inputs, out, settings, mlflow=mlflow, resume=resume_from, progress=progress), None
    else:
        fit = local_fit(args.accelerator, args.devices)
    inputs = prepare_heal(source, cfg, world_size=workers if use_ray else args.devices)
    parent = args.trial_run or (find_trial_run(tracker, source.pruned_path) if source.pruned_path else None)
    tags = {"heal.backend": "ray" if use_ray else "local", "heal.devices": workers if use_ray else args.devices}
    started_ray = False
    try:
        if use_ray:

            started_ray = ray_preflight(settings).started_local  # connects or starts a cluster, checks its devices
        result = heal(inputs, out_dir, fit=fit, tracker=tracker, parent_run_id=parent, resume=resume,
                      dense=not args.no_dense, progress=not args.quiet, tags=tags)
    except HealingInterrupted as e:
        if tracker.enabled:

            info = read_run_file(out_dir)
            if info:
                tracker.client().set_terminated(info["run_id"], "KILLED")
        print(f"blockprune: {e}", file=sys.stderr)
        return 130
    finally:
        if started_ray:  # a cluster this command started; one it joined keeps running

            shutdown()
    summary = {"merged": result.merged_path, "adapter": result.adapter_path, "steps": result.fit.steps,
               "tokens_trained": result.fit.tokens, "train_seconds": round(result.fit.seconds, 1),
               "ppl_before": result.ppl_before, "ppl_after": result.ppl_after, "ppl_dense": result.ppl_dense,
               "mlflow_run": result.run_id, "parent_run": parent}
    print(json.dumps(summary))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n")
    if result.run_id:
        print(f"[blockprune] MLflow: {tracker.describe(result.run_id)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_entry(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
