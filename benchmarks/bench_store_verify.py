"""What verifying a store on every reuse costs: full sha256 (threaded and not) vs cheaper schemes.

Two stores:

- ``smollm2-demo``: the real store of ``make demo`` (smollm2-135m, wikipedia, 32 × 256 windows, 4,096 sampled
  tokens, float16, mid-layer boundaries: 61 arrays × 4,096 × 576), captured through the pipeline into
  ``$BLOCKPRUNE_CACHE/stores`` (reused when it is there, so ``make demo`` reuses it too);
- ``qwen1.5b-shaped``: a store shaped like qwen2.5-coder-1.5b's with the same settings (57 arrays × 4,096 ×
  1,536 float16, 717 MB), written with the real :class:`StoreWriter` from random arrays.

Schemes, each timed with the files in the page cache ("warm", a rerun soon after) and dropped from it with
``posix_fadvise(DONTNEED)`` ("cold", a rerun days later):

- ``sha256 ×1``: the manifest's checksums, one thread; ``sha256 ×N``: the same on N threads (what
  ``ActivationStore.verify`` does);
- ``xxh3_64``: a non-cryptographic hash of the whole file (would need a second checksum in the manifest);
- ``sampled``: sha256 of 16 × 64 KiB per file + the size (misses most single-region corruptions);
- ``size only``: ``stat`` against the expected size (misses every in-place corruption).

Reference costs beside it: loading the model's weights (what a reuse still pays) and the capture itself.

    python benchmarks/bench_store_verify.py [--repeats 3] [--skip-demo]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "bench_store_verify.json"
CHUNK = 1 << 22


def drop_cache(files: list[Path]) -> None:
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files: list[Path]) -> None:
    for f in files:
        with f.open("rb") as fh:
            while fh.read(CHUNK):
                pass


def sha256_file(f: Path) -> str:
    h = hashlib.sha256()
    with f.open("rb") as fh:
        while b := fh.read(CHUNK):
            h.update(b)
    return h.hexdigest()


def xxh3_file(f: Path) -> str:
    import xxhash

    h = xxhash.xxh3_64()
    with f.open("rb") as fh:
        while b := fh.read(CHUNK):
            h.update(b)
    return h.hexdigest()


def sampled_file(f: Path, n: int = 16, size: int = 1 << 16) -> str:
    total = f.stat().st_size
    h = hashlib.sha256(str(total).encode())
    with f.open("rb") as fh:
        for off in np.linspace(0, max(0, total - size), n).astype(int):
            fh.seek(int(off))
            h.update(fh.read(size))
    return h.hexdigest()


def schemes(threads: int) -> dict[str, Callable[[list[Path]], object]]:
    def pooled(fn: Callable[[Path], str], n: int) -> Callable[[list[Path]], object]:
        def run(files: list[Path]) -> object:
            with ThreadPoolExecutor(max_workers=n) as pool:
                return list(pool.map(fn, files))

        return run

    out: dict[str, Callable[[list[Path]], object]] = {
        "sha256 ×1": lambda files: [sha256_file(f) for f in files],
        f"sha256 ×{threads}": pooled(sha256_file, threads),
    }
    try:
        import xxhash  # noqa: F401

        out["xxh3_64 ×1"] = lambda files: [xxh3_file(f) for f in files]
    except ImportError:
        pass
    out["sampled 16×64KiB"] = lambda files: [sampled_file(f) for f in files]
    out["size only"] = lambda files: [f.stat().st_size for f in files]
    return out


def time_scheme(fn: Callable[[list[Path]], object], files: list[Path], cold: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if cold:
            drop_cache(files)
        else:
            warm(files)
        t0 = time.perf_counter()
        fn(files)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def demo_store(progress: bool) -> tuple[Path, float, float]:
    """(store path, capture seconds, weight-load seconds) of the ``make demo`` store."""
    from blockprune.calibration.settings import CaptureSettings
    from blockprune.models.zoo import load_model
    from blockprune.pipeline.config import CalibrationSettings, JobConfig, TrialSpec
    from blockprune.pipeline.prepare import capture_or_reuse, prepare

    job = JobConfig(model="smollm2-135m", calibration=CalibrationSettings("wikipedia", 32, 256, 0),
                    trials=(TrialSpec("shortgpt", 4),), capture=CaptureSettings())
    p = prepare(job)
    t0 = time.perf_counter()
    model = load_model("smollm2-135m")[0]
    load_s = time.perf_counter() - t0
    store, _ = capture_or_reuse(p, model, progress=progress)
    return store.path, float(store.manifest["capture_seconds"]), load_s


def qwen_shaped_store(root: Path) -> Path:
    """57 boundaries (h_000…h_028, m_000…m_027) × 4,096 × 1,536 float16 through the real StoreWriter."""
    from blockprune.calibration.store import StoreWriter, boundary_name

    n_layers, rows, hidden = 28, 4096, 1536
    names = [boundary_name("h", i) for i in range(n_layers + 1)] + [boundary_name("m", i) for i in range(n_layers)]
    writer = StoreWriter(root / "qwen-shaped", names, rows, hidden, "float16")
    rng = np.random.default_rng(0)
    for n in names:
        writer.write_rows(n, 0, rng.standard_normal((rows, hidden), dtype=np.float32))
    writer.save_array("positions", np.zeros((rows, 2), np.int64))
    return writer.commit({"n_layers": n_layers, "n_rows": rows, "capture_mid": True, "stats": {}}).path


def measure(name: str, path: Path, repeats: int, threads: int, reference: dict[str, float]) -> list[dict]:
    from blockprune.calibration.store import ActivationStore

    store = ActivationStore.open(path)
    files = [path / f"{n}.npy" for n in store.manifest["checksums"]]
    size = sum(f.stat().st_size for f in files)
    rows = []
    for label, fn in schemes(threads).items():
        for cold in (False, True):
            s = time_scheme(fn, files, cold, repeats)
            rows.append({"store": name, "arrays": len(files), "bytes": size, "scheme": label,
                         "cache": "cold" if cold else "warm", "seconds": s, "GB_per_s": size / s / 1e9} | reference)
    # what a reuse actually runs (open + verify, threaded), warm
    warm(files)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ActivationStore.open(path, verify=True)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    rows.append({"store": name, "arrays": len(files), "bytes": size, "scheme": "ActivationStore.open(verify=True)",
                 "cache": "warm", "seconds": s, "GB_per_s": size / s / 1e9} | reference)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--skip-demo", action="store_true", help="only the qwen-shaped store (no model needed)")
    args = ap.parse_args()
    rows: list[dict] = []
    if not args.skip_demo:
        path, capture_s, load_s = demo_store(progress=False)
        rows += measure("smollm2-demo", path, args.repeats, args.threads,
                        {"capture_seconds": capture_s, "weights_load_seconds": load_s})
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as d:
        path = qwen_shaped_store(Path(d))
        # OFFLINE.md: qwen2.5-coder-1.5b loads in 62 s here, 32 × 256 calibration tokens take ≈ 3 min
        rows += measure("qwen1.5b-shaped", path, args.repeats, args.threads,
                        {"capture_seconds": 180.0, "weights_load_seconds": 62.0})
    print(f"{'store':<17}{'MB':>6}  {'scheme':<35}{'cache':<6}{'seconds':>9}{'GB/s':>9}{'÷ load':>8}{'÷ capture':>10}")
    for r in rows:
        print(f"{r['store']:<17}{r['bytes'] / 1e6:>6.0f}  {r['scheme']:<35}{r['cache']:<6}{r['seconds']:>9.4f}"
              f"{r['GB_per_s']:>9.2f}{r['seconds'] / r['weights_load_seconds']:>8.1%}"
              f"{r['seconds'] / r['capture_seconds']:>10.2%}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cpus": os.cpu_count(), "threads": args.threads, "repeats": args.repeats,
                                   "rows": rows}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
