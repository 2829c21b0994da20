"""A small ActivationStore with residual-stream-like arrays, written through the real StoreWriter.

For tests that need a store but not a model: every method × estimator can be run on it in seconds.
Boundary h_{l+1} = h_l + a block update whose size varies by layer, so scores differ between blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from blockprune.calibration.stats import BlockStats
from blockprune.calibration.store import ActivationStore, StoreWriter, boundary_name


def synthetic_store(path: str | Path, n_layers: int = 8, n_windows: int = 4, tokens: int = 64, d: int = 16,
                    seed: int = 0) -> ActivationStore:
    rng = np.random.default_rng(seed)
    n = n_windows * tokens
    positions = np.stack([np.repeat(np.arange(n_windows), tokens), np.tile(np.arange(tokens), n_windows)], axis=1)
    h = [rng.standard_normal((n, d)).astype(np.float32)]
    mids = []
    scale = np.linspace(0.2, 1.5, n_layers)[rng.permutation(n_layers)]
    for i in range(n_layers):
        mix = rng.standard_normal((d, d)) / np.sqrt(d)
        attn = (np.tanh(h[-1] @ mix) * scale[i] * 0.5).astype(np.float32)
        mids.append(h[-1] + attn)
        h.append((mids[-1] + np.tanh(mids[-1] @ mix.T) * scale[i]).astype(np.float32))
    names = [boundary_name("h", i) for i in range(n_layers + 1)] + [boundary_name("m", i) for i in range(n_layers)]
    writer = StoreWriter(path, names, n, d, "float32")
    for i, a in enumerate(h):
        writer.write_rows(boundary_name("h", i), 0, a.astype(np.float32))
    for i, a in enumerate(mids):
        writer.write_rows(boundary_name("m", i), 0, a.astype(np.float32))
    writer.save_array("positions", positions)
    writer.save_array("token_ids", rng.integers(0, 1000, n))
    stats = {g: BlockStats(n_layers) for g in ("layer", "attention", "mlp")}
    t = [torch.from_numpy(a) for a in h]
    m = [torch.from_numpy(a) for a in mids]
    for i in range(n_layers):
        stats["layer"].add(i, t[i], t[i + 1])
        stats["attention"].add(i, t[i], m[i])
        stats["mlp"].add(i, m[i], t[i + 1])
    manifest = {"model": "synthetic", "n_layers": n_layers, "hidden_size": d, "n_rows": n, "capture_mid": True,
                "tokens_calibrated": n, "stats": {g: s.to_dict() for g, s in stats.items()}}
    return writer.commit(manifest)
