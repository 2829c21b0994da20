"""``--help`` of every entry point: wall time of a fresh process, and which heavy modules it loaded.

Target: under 0.5 s each (the CLI layer imports no torch / ray / mlflow / transformers / lm_eval / matplotlib
until a command runs). Each entry is timed ``--repeats`` times in a fresh interpreter; the median is reported.

    python benchmarks/bench_cli_help.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_cli_help.json"
HEAVY = ("torch", "ray", "mlflow", "transformers", "lm_eval", "matplotlib")
ENTRIES = ["blockprune.jobs.cli", "blockprune.jobs.calibrate", "blockprune.jobs.evaluate", "blockprune.jobs.sweep",
           "blockprune.jobs.compare", "blockprune.jobs.study", "blockprune.jobs.heal"]
PROBE = ("import runpy, sys; sys.argv = [{m!r}, '--help']\n"
         "try:\n    runpy.run_module({m!r}, run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('HEAVY=' + ','.join(x for x in {heavy!r} if x in sys.modules), file=sys.stderr)")


def measure(module: str, repeats: int) -> dict:
    times, heavy = [], ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", PROBE.format(m=module, heavy=HEAVY)], capture_output=True,
                             text=True, timeout=120)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0 or "usage" not in out.stdout:
            raise SystemExit(f"{module} --help failed: {out.stderr[-2000:]}")
        heavy = out.stderr.rsplit("HEAVY=", 1)[-1].strip()
    return {"entry": module, "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
            "heavy_modules_loaded": heavy, "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    python_alone = statistics.median(
        [(lambda t0: (subprocess.run([sys.executable, "-c", "pass"]), time.perf_counter() - t0)[1])(
            time.perf_counter()) for _ in range(args.repeats)])
    rows = [measure(m, args.repeats) for m in ENTRIES]
    print(f"{'entry point':<28} {'median s':>9} {'max s':>7}  heavy modules loaded   (python alone: "
          f"{python_alone:.3f} s)")
    for r in rows:
        ok = "ok" if r["median_s"] < 0.5 and not r["heavy_modules_loaded"] else "OVER"
        print(f"{r['entry']:<28} {r['median_s']:>9.3f} {r['max_s']:>7.3f}  {r['heavy_modules_loaded'] or '-':<20} {ok}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"python_alone_s": round(python_alone, 3), "target_s": 0.5, "rows": rows},
                                  indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
