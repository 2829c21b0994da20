"""EntroDrop and MI-PRUN as their authors ran them vs blockprune's earlier readings vs ShortGPT (issue #21).

Per model (smollm2-135m, gemma3-270m), on 32 x 256 Wikipedia calibration windows (seed 0):

1. three stores: ``tokens`` (4,096 positions drawn across the windows, BOS excluded: blockprune's default
   store), ``windows+BOS`` (every position of all 32 windows, the BOS row kept as position 0: the reference
   mode's store) and ``crops`` (the same text cut into 256-token crops without BOS, every position kept: the
   windows the official code feeds, random crops whose first token is an ordinary one);
2. per-block ΔH from a literal re-implementation of the released code (tests/calibration/
   entrodrop_reference.py) on the ``crops`` store (the official reading), and the Spearman ρ against it of
   blockprune's reference mode (``entropy.*_window``) on ``windows+BOS`` and on ``crops``, and of the
   earlier pooled estimators (``entropy.*``) on ``tokens``; at layer and attention granularity;
3. plans and held-out perplexity (16 x 256 held-out Wikipedia windows, ``chunk_perplexity``) divided by the
   dense model's: ShortGPT; EntroDrop reference mode (fixed protection of blocks 0, 1, L-1) on
   ``windows+BOS`` and on ``crops``; EntroDrop as blockprune ran it before (pooled estimator, stage end
   detected from the curve) on ``tokens``; MI-PRUN greedy and FBS with ``mi.perdim`` (the new default) and
   with ``mi.ksg`` (the old default) on ``tokens``. Layer plans drop 2/4/6/8 blocks, attention plans 4/8.

Stores are kept under ``$BLOCKPRUNE_CACHE/bench-reference`` and reused (float16, or float32 where float16
overflows: Gemma 3); exact run scores are cached beside them. Each model's results are merged into the JSON
as soon as it is done, so ``--models`` can run one model at a time. Writes ``benchmarks/results/bench_reference_methods.json`` and a Markdown table
``benchmarks/results/bench_reference_methods.md``. Takes about an hour on 2 cores: run it under the heavy
lock.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from blockprune.calibration.capture import CaptureSettings, capture
from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.scoring import StoreRunScorer, entropy_increase
from blockprune.calibration.settings import for_window_pooling
from blockprune.calibration.store import finished_store
from blockprune.calibration.windows import (
    TokenWindows,
    calibration_windows,
    heldout_windows,
    split_documents,
    token_stream,
)
from blockprune.env import cache_dir
from blockprune.evaluation.perplexity import chunk_perplexity
from blockprune.models.adapters import adapter_for
from blockprune.models.apply import apply_plan
from blockprune.models.zoo import load_model
from blockprune.selection import select
from blockprune.selection.plan import PrunePlan

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "calibration"))
import entrodrop_reference as official  # noqa: E402

ESTIMATORS = ("knn", "bucket", "renyi")
LAYER_N = (2, 4, 6, 8)
ATTN_N = (4, 8)


def crops_without_bos(tokenizer: Any, windows: TokenWindows, seq_len: int) -> TokenWindows:
    """The calibration text at the same offsets, cut as ``seq_len`` tokens with no BOS (the official crops)."""
    calib, _ = split_documents(load_corpus("wikipedia"))
    stream = token_stream(tokenizer, calib)
    starts = np.minimum(windows.starts, len(stream) - seq_len)  # the last slot may lack one token
    ids = np.stack([stream[s : s + seq_len] for s in starts])
    return TokenWindows(input_ids=ids, starts=starts, has_bos=False)


def get_store(model: Any, name: str, variant: str, windows: TokenWindows, settings: CaptureSettings) -> Any:
    """A finished store of this variant, captured in float16, or in float32 where float16 overflows (Gemma 3's
    residual stream exceeds 65,504)."""
    for dtype in ("float16", "float32"):
        path = Path(cache_dir()) / "bench-reference" / f"{name}-{variant}-{dtype}"
        store = finished_store(path)
        if store is not None:
            return store
        t = time.perf_counter()
        try:
            store = capture(model, adapter_for(model), windows, path, {"model": name, "variant": variant},
                            replace(settings, store_dtype=dtype))
        except OverflowError as e:
            print(f"  {variant}: {e}; capturing in float32")
            continue
        print(f"  captured {variant} store ({dtype}) in {time.perf_counter() - t:.0f} s")
        return store
    raise RuntimeError(f"could not capture the {variant} store of {name}")


class Evaluator:
    """Held-out perplexity of pruned copies, each distinct (granularity, blocks) evaluated once."""

    def __init__(self, model: Any, name: str, revision: str | None, heldout: TokenWindows) -> None:
        self.model, self.name, self.revision, self.heldout = model, name, revision, heldout
        self.n_blocks = len(adapter_for(model).layers(model))
        self.dense = chunk_perplexity(model, heldout, progress=False).perplexity
        self.cache: dict[tuple[str, tuple[int, ...]], float] = {}

    def ratio(self, granularity: str, blocks: tuple[int, ...]) -> float:
        key = (granularity, tuple(blocks))
        if key not in self.cache:
            plan = PrunePlan(model_id=self.name, revision=self.revision, n_blocks=self.n_blocks, blocks=blocks,
                             granularity=granularity)  # type: ignore[arg-type]
            pruned = apply_plan(copy.deepcopy(self.model), plan)
            self.cache[key] = chunk_perplexity(pruned, self.heldout, progress=False).perplexity / self.dense
            del pruned
        return self.cache[key]


def run_model(name: str, quick: bool) -> dict[str, Any]:
    print(f"== {name}")
    model, tok, resolved = load_model(name)
    corpus = load_corpus("wikipedia")
    n_win = 8 if quick else 32
    windows = calibration_windows(tok, corpus, n_win, 256, seed=0)
    crops = crops_without_bos(tok, windows, 256)
    rows = n_win * 256
    stores = {
        "tokens": get_store(model, name, f"tokens{n_win}", windows, CaptureSettings(sample_rows=4096)),
        "windows+BOS": get_store(model, name, f"windows{n_win}", windows,
                                 for_window_pooling(CaptureSettings(sample_rows=rows))),
        "crops": get_store(model, name, f"crops{n_win}", crops, for_window_pooling(CaptureSettings(sample_rows=rows))),
    }
    n = stores["tokens"].n_layers
    grans = {"layer": LAYER_N, "attention": ATTN_N}

    # 2. ranking agreement with the official reading
    agreement: dict[str, Any] = {}
    dh: dict[tuple[str, str, str], list[float]] = {}
    for g in grans:
        for e in ESTIMATORS:
            t = time.perf_counter()
            ref = official.block_scores(stores["crops"].path, n, e, g)
            dh[("official", e, g)] = ref
            for label, store, est in (("reference windows+BOS", stores["windows+BOS"], f"entropy.{e}_window"),
                                      ("reference crops", stores["crops"], f"entropy.{e}_window"),
                                      ("pooled (earlier default)", stores["tokens"], f"entropy.{e}")):
                d, _ = entropy_increase(store, est, {}, g)
                dh[(label, e, g)] = d
                agreement[f"{g}/{e}/{label}"] = float(spearmanr(d, ref).statistic)
            print(f"  {g:9s} {e:6s} ρ vs official: " + ", ".join(
                f"{lab.split(' ')[0]}{'+BOS' if 'BOS' in lab else ''} {agreement[f'{g}/{e}/{lab}']:.3f}"
                for lab in ("reference windows+BOS", "reference crops", "pooled (earlier default)"))
                  + f"  ({time.perf_counter() - t:.0f} s)")

    # 3. plans and perplexity
    ev = Evaluator(model, name, resolved.revision, heldout_windows(tok, corpus, 256, 4 if quick else 16))
    print(f"  dense held-out perplexity {ev.dense:.2f}")
    results: list[dict[str, Any]] = []

    def add(method: str, g: str, k: int, blocks: tuple[int, ...]) -> None:
        r = ev.ratio(g, blocks)
        results.append({"method": method, "granularity": g, "n_prune": k, "blocks": list(blocks), "ppl_ratio": r})
        print(f"  {g:9s} -{k} {method:34s} {r:9.2f}  {list(blocks)}")

    for g, ks in grans.items():
        bi = stores["tokens"].stats[g]["bi"]
        for k in ks:
            add("ShortGPT", g, k, select("shortgpt", n, k, block_scores=bi).blocks)
            for e in ESTIMATORS:
                add(f"EntroDrop ref {e} (windows+BOS)", g, k,
                    select("entrodrop", n, k, block_scores=dh[("reference windows+BOS", e, g)]).blocks)
                add(f"EntroDrop ref {e} (crops)", g, k,
                    select("entrodrop", n, k, block_scores=dh[("reference crops", e, g)]).blocks)
                add(f"EntroDrop official-code {e} (crops)", g, k, official.plan(dh[("official", e, g)], k))
                earlier = select("entrodrop", n, k, block_scores=dh[("pooled (earlier default)", e, g)],
                                 stage_rule="curve")
                add(f"EntroDrop earlier {e} (pooled, curve)", g, k, earlier.blocks)
    mi_scores: dict[str, list[float]] = {}
    for est in ("mi.perdim", "mi.ksg"):
        scorer = StoreRunScorer(stores["tokens"], est, {}, "layer")
        t = time.perf_counter()
        mi_scores[est] = scorer.block_scores()
        for k in LAYER_N:
            add(f"MI-PRUN greedy {est}", "layer", k, select("mi_greedy", n, k, score_run=scorer).blocks)
            add(f"MI-PRUN FBS {est}", "layer", k, select("mi_fbs", n, k, score_run=scorer).blocks)
        print(f"  {est}: {scorer.computed} run scores computed in {time.perf_counter() - t:.0f} s")
    return {"model": name, "n_blocks": n, "dense_ppl": ev.dense, "calibration_windows": n_win,
            "spearman_vs_official": agreement, "plans": results, "mi_block_scores": mi_scores,
            "delta_h": {"/".join(k): v for k, v in dh.items()}}


def markdown(out: list[dict[str, Any]]) -> str:
    lines = ["# EntroDrop / MI-PRUN reference readings (issue #21)", "",
             "Generated by `benchmarks/bench_reference_methods.py`. Perplexity on 16 × 256 held-out Wikipedia "
             "windows divided by the dense model's; calibration 32 × 256 Wikipedia windows, seed 0.", ""]
    for m in out:
        lines += [f"## {m['model']} (dense perplexity {m['dense_ppl']:.2f})", "",
                  "Spearman ρ of per-block ΔH against the official-code reading (literal re-implementation on "
                  "BOS-free crops):", "", "| granularity | estimator | reference mode, windows + BOS row | "
                  "reference mode, crops | earlier pooled estimator |", "|---|---|---|---|---|"]
        for g in ("layer", "attention"):
            for e in ESTIMATORS:
                a = m["spearman_vs_official"]
                lines.append(f"| {g} | {e} | {a[f'{g}/{e}/reference windows+BOS']:.3f} | "
                             f"{a[f'{g}/{e}/reference crops']:.3f} | {a[f'{g}/{e}/pooled (earlier default)']:.3f} |")
        lines.append("")
        cols = [("layer", k) for k in LAYER_N] + [("attention", k) for k in ATTN_N]
        lines += ["| method | " + " | ".join(f"{g} −{k}" for g, k in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        methods = list(dict.fromkeys(r["method"] for r in m["plans"]))
        for meth in methods:
            cells = []
            for g, k in cols:
                hit = [r for r in m["plans"] if r["method"] == meth and r["granularity"] == g and r["n_prune"] == k]
                cells.append(f"{hit[0]['ppl_ratio']:.2f}" if hit else "")
            lines.append(f"| {meth} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m")
    ap.add_argument("--quick", action="store_true", help="8 calibration windows, 4 held-out windows")
    ap.add_argument("--out", default="benchmarks/results/bench_reference_methods.json")
    args = ap.parse_args()
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = {m["model"]: m for m in json.loads(path.read_text())} if path.exists() else {}
    for name in args.models.split(","):  # each model is written as soon as it is measured
        done[name] = run_model(name, args.quick)
        out = list(done.values())
        path.write_text(json.dumps(out, indent=1))
        path.with_suffix(".md").write_text(markdown(out))
        print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
