"""EntroDrop (Yang et al. 2025): drop the blocks that raise entropy least, outside the early stage.

``delta_h[l] = H(h_l) − H(h_{l−1})`` per block (for ``attention`` granularity the caller measures
the output after the attention sub-block, for ``mlp`` the input is that stream; selection only
needs one ΔH per block). Entropy first *decreases* through an initial run of blocks (stage 1) and
then increases (stage 2). Stage-1 blocks and the last block are never dropped; among the rest the
``n_prune`` lowest ΔH go.

Which blocks count as stage 1 (``stage_rule``):

* ``"fixed"`` (default): blocks 0 and 1, and the last block, are protected, whatever the curve. This is
  what the released code does (``process_layers`` in LlamaEntroDrop.py / MistralEntroDrop.py sets their
  scores to infinity before ranking; docs/REFERENCE-METHODS.md).
* ``"curve"``: ``s_start`` is detected from the estimated ΔH (blockprune's reading of the paper's prose,
  which describes the stage boundary but fixes no rule). Detecting it is the delicate part: entropy
  estimates are noisy, so the sign of one ΔH is not evidence. See :func:`detect_entropy_stage_end`.

An explicit ``s_start`` overrides both: blocks below it and the last block are protected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from blockprune.selection.result import Selection
from blockprune.selection.topk import check_block_scores, check_n_prune, select_lowest

DEFAULT_REL_TOL = 0.1
DEFAULT_NOISE_K = 3.0
StageRule = Literal["fixed", "curve"]
STAGE_RULES: tuple[StageRule, ...] = ("fixed", "curve")
FIXED_STAGE_END = 2  # the released code protects blocks 0 and 1 (and the last)


@dataclass(frozen=True)
class StageDetection:
    """Outcome of stage detection, kept so a plan can show why s_start is where it is."""

    s_start: int
    threshold: float  # rise of the cumulative curve above its running minimum that ends stage 1
    noise: float  # robust per-block noise estimate of ΔH
    confirmed: bool  # False: the curve never rose by ``threshold``; s_start is its global minimum


def detect_entropy_stage(
    delta_h: Sequence[float], *, rel_tol: float = DEFAULT_REL_TOL, noise_k: float = DEFAULT_NOISE_K
) -> StageDetection:
    """Find the end of the entropy-decreasing stage on the cumulative entropy curve, with hysteresis.

    Why the cumulative curve: ``C_i = Σ_{l<i} ΔH_l`` (``C_0 = 0`` is the embedding output) is the
    entropy after block ``i−1`` up to a constant. A noisy positive ΔH inside stage 1 is a small
    bump on a falling curve, and a noisy negative ΔH in stage 2 is a small dip on a rising one;
    neither moves the curve's minimum much, whereas the sign test "first ΔH ≥ 0" flips on either.

    Rule: walk the curve keeping its running minimum; stage 1 ends at that minimum once the curve
    has risen more than ``threshold`` above it. ``threshold = max(rel_tol × (max C − min C),
    noise_k × σ̂)``, where σ̂ is a robust per-block noise scale of ΔH (MAD of first differences,
    /√2, so a smooth trend and the one stage-1 → stage-2 jump do not count as noise). Stopping at
    the *first* confirmed minimum ignores later dips (e.g. entropy falling again in the last
    blocks). A noise-induced dip just after the true minimum can only move ``s_start`` later, i.e.
    protect more blocks: the safe direction. If the curve never rises by the threshold, ``s_start``
    is its global minimum (``n_blocks`` when entropy falls throughout: nothing is droppable).

    Measured on synthetic curves (32 blocks, stage 1 of 2–6 blocks, Gaussian or Student-t noise of
    0.05–0.1 per ΔH against |ΔH| ≈ 0.1 near the boundary): exact as often as the naive sign rule
    (within a few points), about half as many *early* detections (the harmful error, which exposes
    stage-1 blocks to dropping), but a longer tail of *late* detections (worst case ~10–16 blocks at
    the highest noise). Near the boundary no rule can beat the noise; this one errs on the safe side.
    """
    d = np.asarray(check_block_scores(delta_h), dtype=float)
    if rel_tol < 0 or noise_k < 0:
        raise ValueError("rel_tol and noise_k must be >= 0")
    curve = np.concatenate([[0.0], np.cumsum(d)])
    span = float(curve.max() - curve.min())
    if d.size >= 3:
        diffs = np.diff(d)
        noise = float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2.0))
    else:
        noise = 0.0
    threshold = max(rel_tol * span, noise_k * noise, 1e-12 * max(1.0, span))
    i_min = 0
    confirmed = False
    for i in range(1, curve.size):
        if curve[i] < curve[i_min]:
            i_min = i
        elif curve[i] - curve[i_min] > threshold:
            confirmed = True
            break
    return StageDetection(s_start=i_min, threshold=threshold, noise=noise, confirmed=confirmed)


def detect_entropy_stage_end(
    delta_h: Sequence[float], *, rel_tol: float = DEFAULT_REL_TOL, noise_k: float = DEFAULT_NOISE_K
) -> int:
    """``s_start``: index of the first block after the entropy-decreasing stage (0 if none)."""
    return detect_entropy_stage(delta_h, rel_tol=rel_tol, noise_k=noise_k).s_start


def entrodrop_select(delta_h: Sequence[float], n_prune: int, s_start: int | None = None,
                     stage_rule: StageRule = "fixed") -> Selection:
    """Drop the ``n_prune`` lowest-ΔH blocks among ``s_start .. L−2``.

    ``s_start`` is 2 under the ``"fixed"`` rule (blocks 0, 1 and L−1 protected, as the released code), is
    detected from ``delta_h`` under ``"curve"``, and an explicit value overrides either. ``info`` records
    it, where it came from, and the detection threshold when detected. Ties go to the lower block index
    (the released code sorts by (score, index) too).
    """
    values = check_block_scores(delta_h)
    n = len(values)
    if n < 2:
        raise ValueError(f"EntroDrop needs at least 2 blocks, got {n}")
    if stage_rule not in STAGE_RULES:
        raise ValueError(f"stage_rule must be one of {', '.join(map(repr, STAGE_RULES))}, got {stage_rule!r}")
    info: dict[str, object] = {"method": "entrodrop", "stage_rule": stage_rule}
    if s_start is not None:
        if isinstance(s_start, bool) or not isinstance(s_start, int | np.integer) or not 0 <= s_start < n:
            raise ValueError(f"s_start must be an int in [0, {n - 1}], got {s_start!r}")
        s = int(s_start)
        info["s_start_source"] = "override"
    elif stage_rule == "fixed":
        s = min(FIXED_STAGE_END, n - 1)
        info["s_start_source"] = "fixed"
    else:
        det = detect_entropy_stage(values)
        s = det.s_start
        info.update(
            s_start_source="detected",
            stage_threshold=det.threshold,
            stage_noise=det.noise,
            stage_confirmed=det.confirmed,
        )
    protected = [*range(min(s, n)), n - 1]
    droppable = n - len(set(protected))
    check_n_prune(
        n_prune,
        droppable,
        f"droppable blocks (stage 1 ends at s_start={s}; blocks < s_start and the last block are kept)",
    )
    sel = select_lowest(values, n_prune, protect=protected)
    info.update(s_start=s, protected=sorted(set(protected)), n_droppable=droppable)
    return Selection(blocks=sel.blocks, info=info)
