"""Resident (whole model in RAM) memory and time of a real 1.5B model, stage by stage, vs its weights.

Every stage runs in a fresh process, so its peak RSS (``ru_maxrss``, which counts file pages mapped
into the process too) is its own; a parent thread also polls the child's RSS (psutil) as a cross-check.

- ``convert``: first use of a bundled model in an empty cache: join the chunk packages, verify the
  sha256, dequantise tensor by tensor to a bf16 folder.
- ``load``/``capture``/``perplexity`` per compute dtype: load the converted folder; capture
  n × seq_len calibration tokens into an ActivationStore; chunk perplexity on held-out windows.
- ``calibrate``: ``blockprune calibrate --model M --method shortgpt --prune 6`` end to end (fresh
  store root so it captures), its output lines time-stamped to give the time of each stage.

Target: peak RSS ≤ 1.3 × the weights in the compute dtype (the issue measured 2.3× before).

    python benchmarks/bench_resident_memory.py [--model qwen2.5-coder-1.5b] [--dtypes float32 bfloat16]
        [--stages convert load capture perplexity calibrate] [--calibrate-dtypes float32]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "bench_resident_memory.json"
GB = 1e9


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(stage: str, model_name: str, dtype: str, n_samples: int, seq_len: int, eval_windows: int) -> dict:
    """One stage in this (fresh) process; returns its measurements."""
    import torch  # noqa: F401  (imports are part of the floor every stage pays)
    import transformers  # noqa: F401

    out: dict = {"stage": stage, "model": model_name, "dtype": dtype, "rss_after_imports": _maxrss()}
    if stage == "convert":
        from blockprune.models.zoo import resolve_model

        t0 = time.perf_counter()
        resolved = resolve_model(model_name, progress=False)
        out["seconds"] = time.perf_counter() - t0
        folder = Path(resolved.path)
        out["folder_bytes"] = sum(f.stat().st_size for f in folder.iterdir())
        out["peak_rss"] = _maxrss()
        return out

    from blockprune.calibration.capture import CaptureSettings, capture
    from blockprune.calibration.corpora import load_corpus
    from blockprune.calibration.windows import calibration_windows, heldout_windows
    from blockprune.evaluation.perplexity import chunk_perplexity
    from blockprune.models.adapters import adapter_for
    from blockprune.models.zoo import load_model

    t0 = time.perf_counter()
    model, tok, _ = load_model(model_name, dtype=dtype)
    out["load_s"] = time.perf_counter() - t0
    out["weights_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    out["n_params"] = sum(p.numel() for p in model.parameters())
    out["rss_after_load"] = _maxrss()
    corpus = load_corpus("wikipedia")
    if stage == "capture":
        windows = calibration_windows(tok, corpus, n_samples, seq_len, seed=0)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            capture(model, adapter_for(model), windows, Path(d) / "store", {"model": model_name},
                    CaptureSettings(sample_rows=4096, batch_size=4), progress=False)
            out["capture_s"] = time.perf_counter() - t0
        out["tokens"] = n_samples * seq_len
        out["tokens_per_s"] = out["tokens"] / out["capture_s"]
    elif stage == "perplexity":
        windows = heldout_windows(tok, corpus, seq_len, eval_windows)
        t0 = time.perf_counter()
        res = chunk_perplexity(model, windows, batch_size=4, progress=False)
        out["perplexity_s"] = time.perf_counter() - t0
        out["perplexity"] = res.perplexity
        out["tokens"] = res.n_tokens
    out["peak_rss"] = _maxrss()
    return out


class _RSSPoller(threading.Thread):
    """Peak RSS of a process and its children, polled every 0.2 s (a cross-check of ru_maxrss)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, False

    def run(self) -> None:
        import psutil

        try:
            proc = psutil.Process(self.pid)
            while not self.done:
                try:
                    rss = sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
                except psutil.NoSuchProcess:
                    break
                self.peak = max(self.peak, rss)
                time.sleep(0.2)
        except psutil.NoSuchProcess:
            pass


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, list[tuple[float, str]], int, float]:
    """(return code, time-stamped output segments, polled peak RSS, seconds) of a command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    poller = _RSSPoller(proc.pid)
    poller.start()
    lines: list[tuple[float, str]] = []
    buf = b""
    assert proc.stdout is not None
    while chunk := proc.stdout.read1(4096):
        buf += chunk
        *done, buf = re.split(rb"[\r\n]", buf)
        now = time.perf_counter() - t0
        lines += [(now, seg.decode(errors="replace")) for seg in done if seg.strip()]
    if buf.strip():
        lines.append((time.perf_counter() - t0, buf.decode(errors="replace")))
    rc = proc.wait()
    poller.done = True
    poller.join()
    return rc, lines, poller.peak, time.perf_counter() - t0


def run_stage(stage: str, args: argparse.Namespace, dtype: str, env: dict[str, str]) -> dict:
    cmd = [sys.executable, __file__, "--child", stage, args.model, dtype, str(args.n_samples), str(args.seq_len),
           str(args.eval_windows)]
    rc, lines, polled, _ = _run(cmd, env)
    if rc != 0:
        raise RuntimeError(f"stage {stage} ({dtype}) failed:\n" + "\n".join(s for _, s in lines[-30:]))
    result = json.loads(lines[-1][1])
    result["polled_peak_rss"] = polled
    return result


_MARKS = {  # the CLI's own output lines, in order: each ends a stage
    "prepare": re.compile(r"\[blockprune\] .*: \d+ layers"),
    "capture": re.compile(r"captured \d+ rows .* in ([0-9.]+) s"),
    "dense_eval": re.compile(r"dense perplexity"),
    "pruned_eval": re.compile(r"drop layers .* perplexity"),
}


def stage_seconds(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per stage from time-stamped CLI output; load = from prepare's end to capture's start."""
    ends: dict[str, float] = {}
    capture_s = 0.0
    for t, seg in lines:
        for name, pat in _MARKS.items():
            if name not in ends and (m := pat.search(seg)):
                ends[name] = t
                if name == "capture":
                    capture_s = float(m.group(1))
    return {"prepare": ends["prepare"], "load": ends["capture"] - capture_s - ends["prepare"], "capture": capture_s,
            "dense_eval": ends["dense_eval"] - ends["capture"], "pruned_eval": ends["pruned_eval"] - ends["dense_eval"]}


def run_calibrate(args: argparse.Namespace, dtype: str, env: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as stores:
        wrapper = ("import resource, subprocess, sys, json; rc = subprocess.call(sys.argv[1:]); "
                   "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, flush=True); "
                   "sys.exit(rc)")
        cmd = [sys.executable, "-c", wrapper, sys.executable, "-m", "blockprune.jobs.calibrate", "--model", args.model,
               "--method", "shortgpt", "--prune", "6", "--no-tracking", "--store-root", stores, "--dtype", dtype,
               "--n-samples", str(args.n_samples), "--seq-len", str(args.seq_len), "--eval-windows", str(args.eval_windows)]
        rc, lines, polled, seconds = _run(cmd, env)
    if rc != 0:
        raise RuntimeError("calibrate failed:\n" + "\n".join(s for _, s in lines[-30:]))
    stages = stage_seconds(lines)
    result = json.loads(next(s for _, s in reversed(lines) if s.startswith("{")))
    maxrss = int(next(s for _, s in lines if s.startswith("MAXRSS")).split()[1])
    return {"stage": "calibrate", "dtype": dtype, "seconds": seconds, "stage_seconds": stages,
            "ppl_dense": result["ppl_dense"], "ppl_pruned": result["ppl_pruned"], "blocks": result["blocks"],
            "peak_rss": maxrss, "polled_peak_rss": polled,
            "log": [f"{t:7.1f}s {s}" for t, s in lines if s.startswith(("[blockprune]", "{")) or " INFO " in s]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--n-samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], help="compute dtypes to measure")
    ap.add_argument("--stages", nargs="+", default=["convert", "load", "capture", "perplexity", "calibrate"])
    ap.add_argument("--calibrate-dtypes", nargs="+", default=["float32"])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--child", nargs=6, metavar=("STAGE", "MODEL", "DTYPE", "N", "SEQ", "EVAL"))
    a = ap.parse_args()
    if a.child:
        stage, model, dtype, n, seq, ev = a.child
        print(json.dumps(child(stage, model, dtype, int(n), int(seq), int(ev))))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs: list[dict] = []
    if "convert" in a.stages:  # into the normal cache when the model is not there yet, else into a scratch one
        from blockprune.env import cache_dir
        from blockprune.models.zoo import BUNDLED, _is_current

        fresh = not _is_current(Path(cache_dir()) / "models" / a.model, BUNDLED.get(a.model))
        with tempfile.TemporaryDirectory(dir=Path(cache_dir()).parent) as scratch:
            runs.append(run_stage("convert", a, "bfloat16", env if fresh else env | {"BLOCKPRUNE_CACHE": scratch}))
        print(f"convert: {runs[-1]['seconds']:.0f} s, peak RSS {runs[-1]['peak_rss'] / GB:.2f} GB", flush=True)
    # the other stages use the converted folder in the normal cache: make sure it exists (not timed)
    subprocess.run([sys.executable, "-c", "from blockprune.models.zoo import resolve_model; "
                    f"resolve_model({a.model!r}, progress=False)"], check=True, env=env)
    for dtype in a.dtypes:
        for stage in ("load", "capture", "perplexity"):
            if stage in a.stages:
                runs.append(run_stage(stage, a, dtype, env))
                r = runs[-1]
                print(f"{stage} {dtype}: peak RSS {r['peak_rss'] / GB:.2f} GB, weights {r['weights_bytes'] / GB:.2f} GB "
                      f"({r['peak_rss'] / r['weights_bytes']:.2f}×)", flush=True)
    if "calibrate" in a.stages:
        for dtype in a.calibrate_dtypes:
            runs.append(run_calibrate(a, dtype, env))
            print(f"calibrate {dtype}: {runs[-1]['seconds']:.0f} s, peak RSS {runs[-1]['peak_rss'] / GB:.2f} GB",
                  flush=True)
    weights = {r["dtype"]: r["weights_bytes"] for r in runs if "weights_bytes" in r}
    print(f"\nresident memory, {a.model}, {a.n_samples} × {a.seq_len} calibration tokens, "
          f"{a.eval_windows} × {a.seq_len} held-out tokens; 1 GB = 1e9 bytes")
    print(f"{'stage':<11} {'dtype':<9} {'seconds':>8} {'tokens/s':>8} {'peak RSS':>9} {'polled':>7} "
          f"{'weights':>8} {'peak/weights':>12}")
    for r in runs:
        w = weights.get(r["dtype"]) if r["stage"] != "convert" else None
        secs = r.get("seconds") or r.get("capture_s") or r.get("perplexity_s") or r.get("load_s")
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else (
            f"{r['tokens'] / r['perplexity_s']:.0f}" if "perplexity_s" in r else "")
        ratio = f"{r['peak_rss'] / w:.2f}×" if w else ""
        r["peak_over_weights"] = r["peak_rss"] / w if w else None
        print(f"{r['stage']:<11} {r['dtype']:<9} {secs:>8.1f} {tps:>8} {r['peak_rss'] / GB:>8.2f}G "
              f"{r['polled_peak_rss'] / GB:>6.2f}G {(w or 0) / GB:>7.2f}G {ratio:>12}")
    for r in runs:
        if r["stage"] == "calibrate":
            print(f"\ncalibrate ({r['dtype']}): dense ppl {r['ppl_dense']:.3f}, pruned ppl {r['ppl_pruned']:.3f} "
                  f"(drop {r['blocks']}); stage seconds " +
                  ", ".join(f"{k} {v:.0f}" for k, v in r["stage_seconds"].items()) + f"; total {r['seconds']:.0f} s")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"model": a.model, "n_samples": a.n_samples, "seq_len": a.seq_len,
                                   "eval_windows": a.eval_windows, "threads": os.cpu_count(),
                                   "load_average_1m": os.getloadavg()[0], "runs": runs}, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
