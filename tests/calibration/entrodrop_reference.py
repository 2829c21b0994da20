"""An independent, literal re-implementation of the entropy computations in EntroDrop's released code.

Written from the reading recorded in docs/REFERENCE-METHODS.md (github SalesforceAIResearch/EntroDrop,
``LlamaEntroDrop.py``), in torch like the original and step by step as it does them, so that blockprune's
reference mode (``entropy.*_window`` estimators, per-window pooling in ``calibration.scoring``, the fixed
stage rule) can be checked against it. It shares no code with blockprune: it reads a store's arrays and
its (window, position) table directly and groups the rows by window itself.

The official functions receive one window at a time, ``(1, seq_len, d)``; here each window's rows are taken
from the store as ``(1, n, d)`` and flattened the same way. They compute in float32 here (the official KNN
casts to float32; its bucket and Rényi run in the model's dtype, float16 under its main.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def knn_entropy(window: torch.Tensor, k: int = 25) -> float:
    """``estimate_entropy_knn_pytorch``: KL entropy with log n - log k and a 1e-10 floor in the log."""
    _, _, hidden = window.shape
    flat = window.reshape(-1, hidden).float()
    dist = torch.cdist(flat, flat, p=2)
    nearest, _ = torch.topk(dist, k + 1, largest=False)
    radii = nearest[:, 1:]  # the smallest is the point itself
    avg_log_radius = torch.mean(torch.log(radii[:, -1] + 1e-10))
    n, d = flat.shape[0], hidden
    h = (d * avg_log_radius + (d / 2) * math.log(math.pi) - math.lgamma(d / 2 + 1) + math.log(n) - math.log(k))
    return float(h)


def bucket_entropy(window: torch.Tensor, num_bins: int = 20) -> float:
    """``compute_entropy_marginal_binning_gpu_parallel``: per-dimension histogram over the window's own
    min..max, bin = number of lower edges reached minus one, frequencies clamped at 1e-10, summed."""
    _, _, hidden = window.shape
    flat = window.reshape(-1, hidden).float()
    lo, _ = flat.min(dim=0, keepdim=True)
    hi, _ = flat.max(dim=0, keepdim=True)
    edges = lo + torch.linspace(0, 1, num_bins + 1).unsqueeze(1) * (hi - lo)  # (bins + 1, d)
    digitized = torch.sum(flat.unsqueeze(0) >= edges[:-1].unsqueeze(1), dim=0) - 1  # (n, d)
    counts = torch.nn.functional.one_hot(digitized, num_bins).float().sum(dim=0)  # (d, bins)
    probs = torch.clamp(counts / counts.sum(dim=1, keepdim=True), min=1e-10)
    return float((-torch.sum(probs * torch.log(probs), dim=1)).sum())


def renyi_entropy(window: torch.Tensor, alpha: float = 4.0) -> float:
    """``renyi_entropy``: z-score, Gaussian kernel with σ = torch.median of all pairwise distances,
    kernel clamped at 1e-10, 1/(1-α) log mean K^(α-1); a NaN becomes 0."""
    _, _, hidden = window.shape
    x = window.reshape(-1, hidden).float()
    x = (x - x.mean(dim=0)) / (x.std(dim=0) + 1e-10)
    dist = torch.cdist(x, x)
    sigma = torch.median(dist)
    kernel = torch.clamp(torch.exp(-dist**2 / (2 * sigma**2)), min=1e-10)
    mean = torch.clamp(torch.mean(kernel ** (alpha - 1)), min=1e-10)
    h = 1 / (1 - alpha) * torch.log(mean)
    return 0.0 if torch.isnan(h) else float(h)


ESTIMATORS = {"knn": knn_entropy, "bucket": bucket_entropy, "renyi": renyi_entropy}


def windows_of(store_path: str | Path) -> list[np.ndarray]:
    """Row indices of each calibration window in a store (from its positions table)."""
    positions = np.load(Path(store_path) / "positions.npy")
    return [np.flatnonzero(positions[:, 0] == w) for w in np.unique(positions[:, 0])]


_ENTROPIES: dict[tuple[str, str, str, int, int], float] = {}


def block_scores(store_path: str | Path, n_layers: int, estimator: str, granularity: str) -> list[float]:
    """The per-block score ``process_layers`` accumulates: for every window, H(output) - H(input) of each
    block, summed over windows and divided by their number.

    The official code computes each boundary's entropy afresh for every block that reads it; the values are
    the same, so they are remembered per (store, estimator, boundary, window) here: the layer and attention
    scores of one store then cost one pass over its boundaries (the test suite's time, not the arithmetic).

    Torch runs on one thread here: a 256 x 256 ``cdist`` is too small to share, and on a loaded 2-core
    machine two torch threads that wait on each other were measured 10x slower than one (cdist + topk of a
    256 x 576 window: 1.25 s against 0.12 s); that wait was most of the reference tests' minutes in CI."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _block_scores(Path(store_path), n_layers, estimator, granularity)
    finally:
        torch.set_num_threads(threads)


def _block_scores(path: Path, n_layers: int, estimator: str, granularity: str) -> list[float]:
    fn = ESTIMATORS[estimator]
    groups = windows_of(path)

    def entropy(kind: str, i: int, arr: np.ndarray, w: int, rows: np.ndarray) -> float:
        key = (str(path), estimator, kind, i, w)
        if key not in _ENTROPIES:
            _ENTROPIES[key] = fn(torch.from_numpy(np.asarray(arr[rows], dtype=np.float32)).unsqueeze(0))
        return _ENTROPIES[key]

    def boundary(kind: str, i: int) -> np.ndarray:
        return np.load(path / f"{kind}_{i:03d}.npy", mmap_mode="r")

    scores = [0.0] * n_layers
    for i in range(n_layers):
        x = boundary("h", i)
        out_kind, out_i = ("h", i + 1) if granularity == "layer" else ("m", i)
        y = boundary(out_kind, out_i)
        for w, rows in enumerate(groups):
            scores[i] += entropy(out_kind, out_i, y, w, rows) - entropy("h", i, x, w, rows)
    return [s / len(groups) for s in scores]


def drop_order(scores: list[float]) -> list[int]:
    """``process_layers``: blocks 0, 1 and the last get +inf, then blocks sorted by (score, index)."""
    norms = list(scores)
    norms[0] = norms[1] = norms[-1] = float("inf")
    return [i for i, _ in sorted(enumerate(norms), key=lambda t: (t[1], t[0]))]


def plan(scores: list[float], n_drop: int) -> tuple[int, ...]:
    """The blocks dropped first: the first ``n_drop`` of the drop order."""
    return tuple(sorted(drop_order(scores)[:n_drop]))
