"""Token-wise statistics that need every calibration token, accumulated while streaming.

Per block (at layer, attention and MLP granularity) we keep sums over tokens of cos(x, y),
arccos(cos)/π and ‖y − x‖/‖y‖ plus the token count. Sums merge by addition, so data-parallel
replicas combine to exactly the single-process result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

STAT_NAMES = ("cos", "angular", "relmag")


def token_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-token L2 norm of (..., d), flattened to (n_tokens,), in float32."""
    return torch.linalg.vector_norm(t.reshape(-1, t.shape[-1]), dim=-1, dtype=torch.float32)


def token_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-token x·y of (..., d) tensors, flattened to (n_tokens,), in float32."""
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    if x.dtype != torch.float32:
        x, y = x.float(), y.float()
    return torch.linalg.vecdot(x, y)


@dataclass
class BlockStats:
    """Sums for ``n_blocks`` blocks of one granularity."""

    n_blocks: int
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if not self.sums:
            self.sums = {k: np.zeros(self.n_blocks, dtype=np.float64) for k in STAT_NAMES}
        if len(self.counts) != self.n_blocks:
            self.counts = np.zeros(self.n_blocks, dtype=np.int64)

    def add(self, block: int, x: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate tokens of (..., d) tensors x → y (float32 math on their device)."""
        self.add_from_norms(block, token_dot(x, y), token_norm(x), token_norm(y))

    def add_from_norms(self, block: int, dot: torch.Tensor, nx: torch.Tensor, ny: torch.Tensor) -> None:
        """Accumulate from per-token x·y, ‖x‖ and ‖y‖: capture computes each norm once per boundary.

        ‖y − x‖² = ‖x‖² + ‖y‖² − 2 x·y, evaluated in float64 on the per-token vectors.
        """
        dot = dot.double()
        nx, ny = nx.to(dot.device, torch.float64), ny.to(dot.device, torch.float64)  # layers may sit on two GPUs
        cos = dot / (nx * ny).clamp_min(1e-12)
        ang = torch.arccos(cos.clamp(-1.0, 1.0)) / torch.pi
        rel = (nx * nx + ny * ny - 2 * dot).clamp_min(0).sqrt() / ny.clamp_min(1e-12)
        vals = torch.stack([cos.sum(), ang.sum(), rel.sum()]).cpu().numpy()
        if not np.all(np.isfinite(vals)):
            raise FloatingPointError("non-finite statistics")
        for k, v in zip(STAT_NAMES, vals, strict=True):
            self.sums[k][block] += v
        self.counts[block] += dot.numel()

    def merge(self, other: BlockStats) -> BlockStats:
        if other.n_blocks != self.n_blocks:
            raise ValueError("cannot merge statistics of different block counts")
        return BlockStats(
            self.n_blocks,
            {k: self.sums[k] + other.sums[k] for k in STAT_NAMES},
            self.counts + other.counts,
        )

    def means(self) -> dict[str, list[float]]:
        if np.any(self.counts == 0):
            raise ValueError("some blocks saw no tokens")
        out = {k: (self.sums[k] / self.counts).tolist() for k in STAT_NAMES}
        out["bi"] = [1.0 - c for c in out["cos"]]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"sums": {k: v.tolist() for k, v in self.sums.items()}, "counts": self.counts.tolist(),
                **self.means()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockStats:
        sums = {k: np.asarray(v, dtype=np.float64) for k, v in d["sums"].items()}
        counts = np.asarray(d["counts"], dtype=np.int64)
        return cls(len(counts), sums, counts)
