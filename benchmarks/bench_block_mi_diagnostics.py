"""Why MI-PRUN's per-coordinate MI ranks Gemma 3's block 0 among the most redundant blocks (RESULTS.md).

The small study found MI-PRUN (``mi.perdim``, the authors' reading) dropping gemma3-270m's block 0 in most
plans (−2 → blocks 0 16, ppl× 8.01), while ShortGPT never does. This measures, per block, what the
per-coordinate MI sees next to what the block does to the state, on the same kind of rows the study scores
(``sample_rows`` positions drawn across the calibration windows, BOS rows left out, float16 rounding unless
the state overflows float16, as the store does):

* ``mi``: ``mi.perdim`` (1-D KSG per coordinate, scikit-learn's estimator), the MI-PRUN score;
* ``mi_gauss``: ``mi.perdim_gaussian`` (−½ log(1 − ρ_j²) per coordinate): if it ranks a block the same way,
  the ranking comes from the per-coordinate reading itself, not from KSG's handling of repeated values;
* ``bi``: ShortGPT's Block Influence, 1 − cos(x, y), and ``update`` = median ‖y − x‖ / ‖x‖: how much the
  block turns and moves the whole state;
* ``abs_corr``: mean over coordinates of |ρ(x_j, y_j)|;
* ``token_r2_y``: the share of the output's variance explained by the token id alone (per-token means):
  an output that is (nearly) a function of the token carries a discrete, high-MI dependence on an input
  that is one too (block 0's input is the token's embedding).

Writes ``benchmarks/results/bench_block_mi_diagnostics.{json,md}``. About 6.5 minutes on 2 cores (measured with another job running beside it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.windows import calibration_windows
from blockprune.estimators.perdim import perdim, perdim_gaussian
from blockprune.models.zoo import load_model

OUT = Path(__file__).resolve().parent / "results" / "bench_block_mi_diagnostics.json"
FLOAT16_MAX = float(np.finfo(np.float16).max)


def token_r2(z: np.ndarray, token_ids: np.ndarray) -> float:
    """1 − (within-token variance / total variance), summed over coordinates: 1 when z is a function of the
    token id alone."""
    _, inv = np.unique(token_ids, return_inverse=True)
    counts = np.bincount(inv).astype(np.float64)
    sums = np.zeros((counts.size, z.shape[1]))
    np.add.at(sums, inv, z)
    resid = z - (sums / counts[:, None])[inv]
    return float(1.0 - resid.var(axis=0).sum() / z.var(axis=0).sum())


def block_rows(model_name: str, n_windows: int, seq_len: int, sample_rows: int, seed: int) -> dict[str, Any]:
    """Per-block diagnostics of one model on Wikipedia calibration windows."""
    import torch

    model, tokenizer, _ = load_model(model_name)
    win = calibration_windows(tokenizer, load_corpus("wikipedia"), n_windows, seq_len, seed=seed)
    ids = torch.as_tensor(win.input_ids)
    with torch.no_grad():
        states = model(ids, output_hidden_states=True).hidden_states  # embeddings, then each block's output
    keep = np.ones(ids.shape, dtype=bool)
    if win.has_bos:
        keep[:, 0] = False  # the BOS row is the same in every window; the study's stores leave it out too
    token_ids = ids.numpy()[keep]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(token_ids.size, size=min(sample_rows, token_ids.size), replace=False))
    token_ids = token_ids[rows]
    out = []
    for b in range(len(states) - 1):
        x = states[b].float().numpy()[keep][rows]
        y = states[b + 1].float().numpy()[keep][rows]
        as_float32 = max(np.abs(x).max(), np.abs(y).max()) > FLOAT16_MAX
        xs, ys = (x, y) if as_float32 else (x.astype(np.float16).astype(np.float32),
                                            y.astype(np.float16).astype(np.float32))
        nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
        corr = [abs(np.corrcoef(x[:, j], y[:, j])[0, 1]) for j in range(x.shape[1])]
        out.append({"block": b, "mi": perdim(xs, ys), "mi_gauss": perdim_gaussian(xs, ys),
                    "bi": float(1.0 - np.mean((x * y).sum(axis=1) / (nx * ny))),
                    "update": float(np.median(np.linalg.norm(y - x, axis=1) / nx)),
                    "input_norm": float(np.median(nx)), "abs_corr": float(np.nanmean(corr)),
                    "token_r2_y": token_r2(y.astype(np.float64), token_ids), "float32": bool(as_float32)})
    for key, high_first in (("mi", True), ("mi_gauss", True), ("bi", False)):
        order = sorted(out, key=lambda r: -r[key] if high_first else r[key])
        for rank, r in enumerate(order, 1):
            r[f"{key}_rank"] = rank  # 1 = the block the method would drop first
    return {"model": model_name, "windows": n_windows, "seq_len": seq_len, "rows": len(rows),
            "distinct_tokens": int(np.unique(token_ids).size), "blocks": out}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["# Per-block diagnostics of MI-PRUN's per-coordinate MI", "",
             "Written by `benchmarks/bench_block_mi_diagnostics.py` (its docstring defines each column). "
             "Ranks: 1 = dropped first (highest MI, lowest BI).", ""]
    for res in results:
        lines += [f"## {res['model']} ({res['windows']} × {res['seq_len']} Wikipedia windows, "
                  f"{res['rows']} rows, {res['distinct_tokens']} distinct tokens)", "",
                  "| block | mi | rank | mi_gauss | rank | bi | rank | update | input norm | abs corr | "
                  "token R² of output |", "|" + "---|" * 11]
        for r in res["blocks"]:
            lines.append(f"| {r['block']} | {r['mi']:.3f} | {r['mi_rank']} | {r['mi_gauss']:.3f} | "
                         f"{r['mi_gauss_rank']} | {r['bi']:.3f} | {r['bi_rank']} | {r['update']:.2f} | "
                         f"{r['input_norm']:.0f} | {r['abs_corr']:.2f} | {r['token_r2_y']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--sample-rows", type=int, default=4096, help="as the study's capture.sample_rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    results = [block_rows(m, a.windows, a.seq_len, a.sample_rows, a.seed) for m in a.models]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=1))
    md = markdown(results)
    a.out.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"wrote {a.out} and {a.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
