"""Benchmark of ``mi.perdim`` (per-coordinate 1-D KSG, MI-PRUN's reading) against scikit-learn per coordinate.

For N x d in {4,096 x 576 (smollm2-sized), 8,192 x 1,536 (Qwen2.5-1.5B-sized)} pairs (x, y) are drawn as
residual-stream-like coordinates: Gaussian pairs with ρ uniform in [0.6, 0.99], a quarter of the
coordinates heavy-tailed (Student t, 3 dof), stored as float32. Timed:

* ``mi.perdim`` on all d coordinates, with 1 thread and with the default thread count;
* scikit-learn's ``mutual_info_regression`` called per coordinate (``n_neighbors=3``), the way the MI-PRUN
  reading uses it, on a seeded subset of coordinates, extrapolated linearly to all d (it is one independent
  call per coordinate); the subset's values are compared with ``mi.perdim``'s for the same coordinates.

Target (issue #21): at least 20x faster than scikit-learn and at most 2 s at 4,096 x 576. Prints a table and
writes JSON (default ``benchmarks/results/bench_mi_perdim.json``). ``--quick``: smaller sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from blockprune.estimators import perdim
from blockprune.estimators._threads import default_threads


def make_pairs(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rho = rng.uniform(0.6, 0.99, d)
    x = rng.standard_normal((n, d))
    x[:, : d // 4] = rng.standard_t(3, (n, d // 4))
    y = rho * x + np.sqrt(1 - rho**2) * rng.standard_normal((n, d))
    return x.astype(np.float32), y.astype(np.float32)


def sklearn_per_coordinate(x: np.ndarray, y: np.ndarray, cols: np.ndarray) -> tuple[float, np.ndarray]:
    from sklearn.feature_selection import mutual_info_regression

    t = time.perf_counter()
    vals = np.array([mutual_info_regression(x[:, [j]], y[:, j], n_neighbors=3, random_state=0)[0] for j in cols])
    return time.perf_counter() - t, vals


def run_case(n: int, d: int, sk_cols: int) -> dict:
    x, y = make_pairs(n, d)
    perdim.perdim_values(x[:500, :8], y[:500, :8])  # warm-up: first-use costs out of the timing
    t = time.perf_counter()
    ours_1 = perdim.perdim_values(x, y, n_threads=1)
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    ours = perdim.perdim_values(x, y)
    tn = time.perf_counter() - t
    cols = np.sort(np.random.default_rng(1).choice(d, size=min(sk_cols, d), replace=False))
    ts, sk = sklearn_per_coordinate(x, y, cols)
    sk_total = ts * d / len(cols)
    return {
        "n": n, "d": d, "seconds_1_thread": t1, "seconds": tn, "threads": default_threads(),
        "sklearn_columns_timed": int(len(cols)), "sklearn_seconds_timed": ts, "sklearn_seconds_extrapolated": sk_total,
        "speedup": sk_total / tn, "speedup_1_thread": sk_total / t1,
        "max_abs_diff_vs_sklearn": float(np.max(np.abs(ours[cols] - sk))),
        "threads_identical": bool(np.array_equal(ours, ours_1)),
        "mean_mi": float(ours.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,024 x 64 and 2,048 x 128 only")
    ap.add_argument("--sklearn-columns", type=int, default=96, help="coordinates timed with scikit-learn")
    ap.add_argument("--out", default="benchmarks/results/bench_mi_perdim.json")
    args = ap.parse_args()
    sizes = [(1024, 64), (2048, 128)] if args.quick else [(4096, 576), (8192, 1536)]
    rows = []
    print(f"{'N x d':>14} {'ours 1 thr':>11} {'ours':>8} {'sklearn (extrap.)':>18} {'speed-up':>9} {'max |diff|':>11}")
    for n, d in sizes:
        r = run_case(n, d, args.sklearn_columns)
        rows.append(r)
        print(f"{n:>6,} x {d:<6,} {r['seconds_1_thread']:>10.2f}s {r['seconds']:>7.2f}s "
              f"{r['sklearn_seconds_extrapolated']:>17.1f}s {r['speedup']:>8.1f}x {r['max_abs_diff_vs_sklearn']:>11.1e}")
    out = {"cases": rows, "machine": {"cpus": os.cpu_count(), "affinity": default_threads(),
                                      "platform": platform.platform(), "python": platform.python_version()},
           "target": {"speedup": 20.0, "seconds_at_4096x576": 2.0},
           "load_average_at_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
