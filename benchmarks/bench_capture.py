"""Capture overhead and memory: capture time ÷ plain forward time, and peak RSS vs n_samples.

Each measurement runs in a fresh subprocess so ``ru_maxrss`` is that run's own peak. "plain" is
the same decoder forward over the same windows with no hooks (the LM head is skipped in both, as
capture skips it). Plain and capture runs alternate, and the ratio is the median of per-pair
ratios, which cancels most of the drift of a shared machine. Target: ratio ≤ 1.15, and RSS
beyond the store flat when n_samples grows (the store holds a fixed number of sampled tokens).

    python benchmarks/bench_capture.py [--model smollm2-135m] [--pairs 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_capture.json"


def child(mode: str, model_name: str, n_samples: int, seq_len: int, sample_rows: int, batch: int) -> dict:
    import torch

    from blockprune.calibration.capture import CaptureSettings, capture
    from blockprune.calibration.corpora import load_corpus
    from blockprune.calibration.windows import calibration_windows
    from blockprune.models.adapters import adapter_for
    from blockprune.models.zoo import load_model

    model, tok, _ = load_model(model_name)
    windows = calibration_windows(tok, load_corpus("wikipedia"), n_samples, seq_len, seed=0)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.inference_mode():  # warm-up: one batch, not timed
        model.base_model(input_ids=torch.from_numpy(windows.input_ids[:batch]), use_cache=False)
    store_bytes = 0
    t0 = time.perf_counter()
    if mode == "plain":
        with torch.inference_mode():
            for i in range(0, n_samples, batch):
                model.base_model(input_ids=torch.from_numpy(windows.input_ids[i : i + batch]), use_cache=False)
    else:
        with tempfile.TemporaryDirectory() as d:
            settings = CaptureSettings(sample_rows=sample_rows, batch_size=batch)
            store = capture(model, adapter_for(model), windows, Path(d) / "s", {"model": model_name}, settings,
                            progress=False)
            store_bytes = sum(f.stat().st_size for f in store.path.glob("*.npy"))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"mode": mode, "n_samples": n_samples, "seq_len": seq_len, "seconds": seconds, "peak_rss": peak,
            "rss_after_load": rss_loaded, "store_bytes": store_bytes, "tokens": n_samples * seq_len}


def run_child(*args: object) -> dict:
    cmd = [sys.executable, __file__, "--child", *map(str, args)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--sample-rows", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=3, help="plain/capture pairs for the time ratio")
    ap.add_argument("--quick", action="store_true", help="n_samples 8 and 32, 1 pair")
    ap.add_argument("--child", nargs=6, metavar=("MODE", "MODEL", "N", "SEQ", "ROWS", "BATCH"))
    a = ap.parse_args()
    if a.child:
        mode, model, n, seq, rows, batch = a.child
        print(json.dumps(child(mode, model, int(n), int(seq), int(rows), int(batch))))
        return
    small, large = (8, 32) if a.quick else (32, 128)
    pairs = 1 if a.quick else a.pairs
    common = (a.model,)
    ratios, runs = [], []
    for _ in range(pairs):
        p = run_child("plain", *common, small, a.seq_len, a.sample_rows, a.batch_size)
        c = run_child("capture", *common, small, a.seq_len, a.sample_rows, a.batch_size)
        ratios.append(c["seconds"] / p["seconds"])
        runs += [p, c]
    big = run_child("capture", *common, large, a.seq_len, a.sample_rows, a.batch_size)
    big_plain = run_child("plain", *common, large, a.seq_len, a.sample_rows, a.batch_size)
    runs += [big, big_plain]
    caps = {r["n_samples"]: r for r in runs if r["mode"] == "capture"}
    plains = {r["n_samples"]: r for r in runs if r["mode"] == "plain"}
    mib = 1 / 2**20
    print(f"\ncapture overhead, {a.model}, windows of {a.seq_len} tokens, batch {a.batch_size}, "
          f"{a.sample_rows} sampled tokens per boundary")
    print(f"{'n_samples':>9} {'plain s':>8} {'capture s':>9} {'ratio':>6} {'peak RSS MiB':>12} "
          f"{'plain RSS':>9} {'store MiB':>9} {'RSS - store':>11}")
    rows = []
    for n in (small, large):
        c, p = caps[n], plains[n]
        beyond = (c["peak_rss"] - c["store_bytes"]) * mib
        row = {"n_samples": n, "plain_s": p["seconds"], "capture_s": c["seconds"],
               "ratio": c["seconds"] / p["seconds"], "peak_rss_mib": c["peak_rss"] * mib,
               "plain_peak_rss_mib": p["peak_rss"] * mib, "store_mib": c["store_bytes"] * mib,
               "rss_beyond_store_mib": beyond}
        rows.append(row)
        print(f"{n:>9} {p['seconds']:>8.1f} {c['seconds']:>9.1f} {row['ratio']:>6.3f} {row['peak_rss_mib']:>12.0f} "
              f"{row['plain_peak_rss_mib']:>9.0f} {row['store_mib']:>9.0f} {beyond:>11.0f}")
    med = statistics.median(ratios)
    print(f"median capture/plain ratio over {pairs} alternating pair(s) at n={small}: {med:.3f} "
          f"(target ≤ 1.15; per pair {', '.join(f'{r:.3f}' for r in ratios)})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"model": a.model, "seq_len": a.seq_len, "sample_rows": a.sample_rows,
                                   "batch_size": a.batch_size, "median_ratio": med, "pair_ratios": ratios,
                                   "rows": rows, "runs": runs}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
