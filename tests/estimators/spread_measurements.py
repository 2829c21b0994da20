"""Measure the sampling spread that the bars in test_estimators_mi.py / test_estimators_perdim.py are sized by.

Not a test (not collected): run ``python tests/estimators/spread_measurements.py`` (a few CPU-minutes, under
the heavy lock). It prints, per case, the mean error and the standard deviation of one draw over many seeds,
the numbers the tests state beside their bars. Seeds are SEED + i, the tests' own draws included.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from estimator_samples import noisy_pair, true_mi  # noqa: E402

from blockprune.estimators import mi, perdim  # noqa: E402

SEED = 20250101


def draw(n: int, d: int, sigma: float | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if sigma is None:
        return rng.standard_normal((n, d)), rng.standard_normal((n, d))
    return noisy_pair(rng, n, d, sigma)


def spread(fn, n: int, d: int, sigma: float | None, seeds: int) -> dict:
    truth = 0.0 if sigma is None else true_mi(d, sigma)
    t = time.perf_counter()
    est = np.array([fn(*draw(n, d, sigma, SEED + i)) for i in range(seeds)])
    return {"n": n, "d": d, "sigma": sigma, "seeds": seeds, "truth": truth, "mean_err": float(est.mean() - truth),
            "sd": float(est.std(ddof=1)), "first_seed_err": float(est[0] - truth),
            "seconds": time.perf_counter() - t}


def gaussian_columns(n: int, rhos: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, rhos.size))
    return x, rhos * x + np.sqrt(1 - rhos**2) * rng.standard_normal((n, rhos.size))


def main() -> None:
    out: dict[str, list] = {"ksg": [], "ksg_independent": [], "gaussian": [], "perdim": []}
    for sigma in (0.5, 1.0, 2.0):
        out["ksg"].append(spread(mi.ksg, 2000, 1, sigma, 200))
        out["ksg"].append(spread(mi.ksg, 20000, 1, sigma, 40))
    for d in (1, 8, 64):
        out["ksg_independent"].append(spread(mi.ksg, 2000, d, None, 100))
        out["ksg_independent"].append(spread(mi.ksg, 8000, d, None, 30))
    for d in (1, 8):
        for sigma in (0.5, 1.0, 2.0):
            out["gaussian"].append(spread(mi.gaussian, 2000, d, sigma, 200))
            out["gaussian"].append(spread(mi.gaussian, 20000, d, sigma, 100))
    rhos = np.array([0.3, 0.6, 0.8, 0.9, 0.95, 0.3, 0.6, 0.8])
    truth = -0.5 * np.log1p(-rhos**2)
    vals = np.array([perdim.perdim_values(*gaussian_columns(20000, rhos, SEED + i)) for i in range(20)])
    out["perdim"].append({"n": 20000, "rhos": rhos.tolist(), "truth": truth.tolist(),
                          "mean_err_per_column": (vals.mean(0) - truth).tolist(),
                          "sd_per_column": vals.std(0, ddof=1).tolist(),
                          "mean_over_columns_err": float(vals.mean(1).mean() - truth.mean()),
                          "mean_over_columns_sd": float(vals.mean(1).std(ddof=1)),
                          "first_seed_err": float(vals[0].mean() - truth.mean())})
    for kind, rows in out.items():
        for r in rows:
            print(kind, json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()
                                    if not isinstance(v, list)}))
    print(json.dumps(out["perdim"], indent=1))


if __name__ == "__main__":
    main()
