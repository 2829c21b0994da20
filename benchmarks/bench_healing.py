"""How much of a pruning's perplexity cost does a short LoRA healing recover?

For each model: ShortGPT's plan (made with the CLI: ``blockprune calibrate --method shortgpt --prune K
--plan-out``), held-out perplexity ÷ dense on wikipedia / lambada / lee-news before and after healing
with the stated budget (training split of the same three corpora — different documents from the
held-out ones), and the share of the log-perplexity gap recovered: 1 − log(healed/dense) / log(pruned/dense).

    flock /tmp/blockprune-heavy.lock .venv/bin/python benchmarks/bench_healing.py            # both models
    .venv/bin/python benchmarks/bench_healing.py --models smollm2-135m:8 --steps 5            # a quick look

Prints a table and writes ``benchmarks/results/bench_healing.json`` (+ ``.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from blockprune.env import apply_env_defaults

apply_env_defaults()

RESULTS = Path(__file__).parent / "results"
CORPORA = ("wikipedia", "lambada", "lee-news")


def ensure_plan(model: str, k: int, plan_dir: Path) -> Path:
    """ShortGPT's −k layer plan, produced with the existing CLI when missing."""
    path = plan_dir / f"{model}-shortgpt-{k}.json"
    if not path.exists():
        plan_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "blockprune.jobs.calibrate", "--model", model, "--method", "shortgpt",
                        "--prune", str(k), "--plan-out", str(path), "--store-dtype", "float32",  # gemma3 overflows fp16
                        "--no-tracking", "--quiet"], check=True)
    return path


def steps_for(model: str, spec: str) -> int:
    if ":" not in spec:
        return int(spec)
    pairs = dict(p.split(":") for p in spec.split(","))
    return int(pairs[model])


def run_one(model: str, k: int, args: argparse.Namespace) -> dict:
    from blockprune.healing.config import HealConfig, LoraSettings
    from blockprune.healing.run import heal, prepare_heal
    from blockprune.healing.source import resolve_source

    plan_path = ensure_plan(model, k, Path(args.plan_dir))
    cfg = HealConfig(corpora=tuple(args.corpora), eval_corpora=CORPORA, seq_len=args.seq_len, batch_size=args.batch_size,
                     micro_batch=args.micro_batch, steps=steps_for(model, args.steps), minutes=args.minutes, lr=args.lr,
                     warmup_steps=args.warmup, val_every=args.val_every, val_windows=2, eval_windows=args.eval_windows,
                     ckpt_every=25, seed=0, lora=LoraSettings(rank=args.rank, alpha=2.0 * args.rank))
    source = resolve_source(plan=str(plan_path), model=model)
    inputs = prepare_heal(source, cfg)
    out_dir = Path(args.work_dir) / f"{model}-shortgpt-{k}"
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    t0 = time.perf_counter()
    result = heal(inputs, out_dir, dense=True, progress=not args.quiet)
    row = {"model": model, "plan_path": str(plan_path), "plan": {"method": "shortgpt", "granularity": "layer", "blocks": list(source.plan.blocks)},
           "budget": {"steps": result.fit.steps, "tokens": result.fit.tokens, "train_minutes": result.fit.seconds / 60,
                      "stopped": result.fit.stopped or "completed", "batch": cfg.batch_size, "seq_len": cfg.seq_len,
                      "lr": cfg.lr, "rank": cfg.lora.rank, "alpha": cfg.lora.alpha, "train_corpora": list(cfg.corpora),
                      "trainable_params": result.fit.trainable_params},
           "ppl_dense": result.ppl_dense, "ppl_pruned": result.ppl_before, "ppl_healed": result.ppl_after,
           "loss_curve": result.fit.history, "val_curve": result.fit.val_history,
           "wall_minutes": (time.perf_counter() - t0) / 60}
    row["ratio_pruned"] = {c: result.ppl_before[c] / result.ppl_dense[c] for c in CORPORA}
    row["ratio_healed"] = {c: result.ppl_after[c] / result.ppl_dense[c] for c in CORPORA}
    row["log_gap_recovered"] = {c: 1 - math.log(row["ratio_healed"][c]) / math.log(row["ratio_pruned"][c])
                                for c in CORPORA}
    geo = lambda d: math.exp(sum(math.log(v) for v in d.values()) / len(d))  # noqa: E731
    row["ratio_pruned_geomean"], row["ratio_healed_geomean"] = geo(row["ratio_pruned"]), geo(row["ratio_healed"])
    row["log_gap_recovered_geomean"] = 1 - math.log(row["ratio_healed_geomean"]) / math.log(row["ratio_pruned_geomean"])
    return row


def run_control(row: dict, args: argparse.Namespace) -> None:
    """The same LoRA budget on the DENSE model (an empty plan): how much of "healing" is adaptation to the
    training corpora' domain rather than repair. Adds ``ppl_dense_lora`` and healed ÷ dense-LoRA to ``row``."""
    from blockprune.healing.config import HealConfig, LoraSettings
    from blockprune.healing.run import heal, prepare_heal
    from blockprune.healing.source import resolve_source
    from blockprune.selection.plan import PrunePlan

    model = row["model"]
    b = row["budget"]
    plan_path = row.get("plan_path") or Path(args.plan_dir) / f"{model}-shortgpt-{len(row['plan']['blocks'])}.json"
    n_layers = json.loads(Path(plan_path).read_text())["n_blocks"]
    plan = PrunePlan(model_id=model, n_blocks=n_layers, blocks=(), method="none")
    cfg = HealConfig(corpora=tuple(b["train_corpora"]), eval_corpora=CORPORA, seq_len=b["seq_len"], batch_size=b["batch"],
                     micro_batch=args.micro_batch, steps=b["steps"], lr=b["lr"], warmup_steps=args.warmup,
                     val_every=0, eval_windows=args.eval_windows, ckpt_every=25, seed=0,
                     lora=LoraSettings(rank=b["rank"], alpha=b["alpha"]))
    out_dir = Path(args.work_dir) / f"{model}-dense-lora"
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    result = heal(prepare_heal(resolve_source(plan=plan, model=model), cfg), out_dir, dense=False,
                  progress=not args.quiet)
    row["ppl_dense_lora"] = result.ppl_after
    row["control_minutes"] = result.fit.seconds / 60
    row["ratio_healed_vs_dense_lora"] = {c: row["ppl_healed"][c] / result.ppl_after[c] for c in CORPORA}
    row["ratio_pruned_vs_dense_lora"] = {c: row["ppl_pruned"][c] / result.ppl_after[c] for c in CORPORA}


def table(rows: list[dict]) -> str:
    lines = ["| model | plan | corpus | dense ppl | pruned ÷ dense | healed ÷ dense | log-gap recovered |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        plan = f"ShortGPT −{len(r['plan']['blocks'])} {r['plan']['blocks']}"
        for c in CORPORA:
            lines.append(f"| {r['model']} | {plan} | {c} | {r['ppl_dense'][c]:.2f} | ×{r['ratio_pruned'][c]:.2f} | "
                         f"×{r['ratio_healed'][c]:.2f} | {r['log_gap_recovered'][c]:.0%} |")
        lines.append(f"| {r['model']} | {plan} | **geomean** | | ×{r['ratio_pruned_geomean']:.2f} | "
                     f"×{r['ratio_healed_geomean']:.2f} | {r['log_gap_recovered_geomean']:.0%} |")
    controlled = [r for r in rows if "ppl_dense_lora" in r]
    if controlled:
        lines += ["", "Control — the same LoRA budget on the dense model (domain adaptation, not repair):", "",
                  "| model | corpus | dense ppl | dense + LoRA ppl | pruned ÷ (dense + LoRA) | healed ÷ (dense + LoRA) |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in controlled:
            for c in CORPORA:
                lines.append(f"| {r['model']} | {c} | {r['ppl_dense'][c]:.2f} | {r['ppl_dense_lora'][c]:.2f} | "
                             f"×{r['ratio_pruned_vs_dense_lora'][c]:.2f} | ×{r['ratio_healed_vs_dense_lora'][c]:.2f} |")
    lines.append("")
    for r in rows:
        b = r["budget"]
        lines.append(f"- {r['model']}: {b['steps']} steps × {b['batch']} × {b['seq_len']} = {b['tokens']:,} tokens "
                     f"({b['stopped']}), {b['train_minutes']:.1f} min of training on this machine "
                     f"({r['wall_minutes']:.1f} min with loading and perplexities); LoRA r={b['rank']} α={b['alpha']:g} "
                     f"on all projections ({b['trainable_params']:,} trainable), lr {b['lr']:g}, "
                     f"training split of {', '.join(b['train_corpora'])}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2-135m:8,gemma3-270m:4", help="model:k pairs")
    p.add_argument("--corpora", default=",".join(CORPORA), help="training corpora (their training splits)")
    p.add_argument("--steps", default="smollm2-135m:80,gemma3-270m:30", help="steps, or model:steps pairs")
    p.add_argument("--minutes", type=float, default=None, help="per-model training time cap")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--plan-dir", default=str(RESULTS / "plans"))
    p.add_argument("--work-dir", default="/tmp/blockprune-bench-healing")
    p.add_argument("--out", default=str(RESULTS / "bench_healing.json"))
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--control", action="store_true",
                   help="instead: train the dense models with each row's budget and add the control to --out")
    args = p.parse_args()
    args.corpora = [c for c in args.corpora.split(",") if c]
    if args.control:
        out = Path(args.out)
        data = json.loads(out.read_text())
        wanted = {spec.split(":")[0] for spec in args.models.split(",")}
        for row in data["rows"]:
            if row["model"] in wanted:
                run_control(row, args)
                out.write_text(json.dumps(data, indent=1) + "\n")
                out.with_suffix(".md").write_text(table(data["rows"]) + "\n")
        print(table(data["rows"]))
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)", "torch": torch.__version__,
            "threads": torch.get_num_threads(), "args": vars(args)}
    rows = []
    for spec in args.models.split(","):
        model, k = spec.split(":")
        rows.append(run_one(model, int(k), args))
        print(table(rows[-1:]), flush=True)
        text = table(rows)  # written after every model: a long run keeps what it finished
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        out.with_suffix(".md").write_text(text + "\n")
    print("\n" + table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
