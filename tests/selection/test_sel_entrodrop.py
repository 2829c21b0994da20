"""EntroDrop: stage-1 detection on synthetic ΔH curves (clean and noisy) and the protected blocks."""

from __future__ import annotations

import numpy as np
import pytest

from blockprune.selection import detect_entropy_stage, detect_entropy_stage_end, entrodrop_select

pytestmark = pytest.mark.unit


def _curve(n: int, s1: int, sigma: float = 0.0, seed: int = 0) -> np.ndarray:
    """Entropy falls through ``s1`` blocks (ΔH from −0.3 to −0.1), then rises by ~0.08 per block."""
    base = np.r_[np.linspace(-0.3, -0.1, s1), np.full(n - s1, 0.08)]
    return base + sigma * np.random.default_rng(seed).standard_normal(n)


def _naive(d: np.ndarray) -> int:
    """The rule the detector is meant to beat: first block with ΔH >= 0."""
    pos = np.nonzero(d >= 0)[0]
    return int(pos[0]) if pos.size else d.size


@pytest.mark.parametrize("s1", [0, 1, 3, 6, 10])
def test_clean_curves(s1: int) -> None:
    d = _curve(32, s1)
    assert detect_entropy_stage_end(d) == s1
    det = detect_entropy_stage(d)
    assert det.confirmed and det.threshold > 0


def test_isolated_blips_do_not_move_the_boundary() -> None:
    # A positive blip inside stage 1 (the naive sign rule stops at block 1) ...
    d = np.r_[-0.5, 0.05, -0.5, -0.4, np.full(20, 0.1)]
    assert _naive(d) == 1
    assert detect_entropy_stage_end(d) == 4
    # ... a negative blip early in stage 2 that stays above the minimum ...
    d = np.r_[-0.5, -0.5, -0.5, 0.2, -0.05, np.full(20, 0.1)]
    assert detect_entropy_stage_end(d) == 3
    # ... and entropy falling again in the last blocks.
    d = np.r_[-0.3, -0.3, np.full(20, 0.1), -0.3, -0.6]
    assert detect_entropy_stage_end(d) == 2


def test_noisy_curves() -> None:
    # Gaussian estimator noise σ = 0.05 per ΔH (the smallest |ΔH| near the boundary is 0.08):
    # exact in most seeds; never more than one block early, at most a few blocks late.
    errors = []
    for s1 in (2, 4, 6):
        for seed in range(50):
            errors.append(detect_entropy_stage_end(_curve(32, s1, sigma=0.05, seed=seed)) - s1)
    errors = np.array(errors)
    assert (errors == 0).mean() >= 0.85
    assert errors.min() >= -1 and errors.max() <= 3
    # Heavy-tailed noise: stopping early (which would expose stage-1 blocks, the harmful error)
    # happens clearly less often than with the naive sign rule (measured ≈ 0.6×; see entrodrop.py).
    early, early_naive = 0, 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        d = np.r_[np.full(5, -0.3), np.full(27, 0.08)] + 0.06 * rng.standard_t(2, 32)
        early += detect_entropy_stage_end(d) < 5
        early_naive += _naive(d) < 5
    assert early < 0.8 * early_naive


def test_monotone_decrease_leaves_nothing_droppable() -> None:
    d = -np.linspace(0.5, 0.1, 12)
    det = detect_entropy_stage(d)
    assert det.s_start == 12 and not det.confirmed
    with pytest.raises(ValueError, match="only 0 droppable"):
        entrodrop_select(d, 1, stage_rule="curve")
    # the released code's fixed rule ignores the curve: blocks 0, 1 and 11 kept, the rest droppable
    assert entrodrop_select(d, 1).blocks == (2,)


def test_selection_protects_stage_one_and_last_block() -> None:
    d = np.r_[-0.5, -0.4, -0.3, 0.5, 0.01, 0.3, 0.02, 0.4, 0.2, 0.0]
    sel = entrodrop_select(d, 3, stage_rule="curve")
    assert sel.info["s_start"] == 3 and sel.info["s_start_source"] == "detected"
    assert sel.blocks == (4, 6, 8)  # block 9 (ΔH 0.0, the lowest in stage 2) is the last: kept
    assert 9 not in sel.blocks and not set(sel.blocks) & {0, 1, 2}
    assert sel.info["protected"] == [0, 1, 2, 9]


def test_override_and_errors() -> None:
    d = np.r_[-0.5, -0.4, -0.3, 0.5, 0.01, 0.3, 0.02, 0.4, 0.2, 0.0]
    sel = entrodrop_select(d, 2, s_start=5)
    assert sel.blocks == (6, 8) and sel.info["s_start"] == 5
    assert sel.info["s_start_source"] == "override"
    assert entrodrop_select(d, 2, s_start=0).blocks == (0, 1)
    with pytest.raises(ValueError, match="only 6 droppable"):
        entrodrop_select(d, 7, stage_rule="curve")  # 10 blocks − 3 in stage 1 − the last
    with pytest.raises(ValueError, match="stage_rule"):
        entrodrop_select(d, 1, stage_rule="paper")
    with pytest.raises(ValueError, match="s_start"):
        entrodrop_select(d, 1, s_start=10)
    with pytest.raises(ValueError, match="finite"):
        entrodrop_select([-0.1, float("nan"), 0.2], 1)


def test_fixed_rule_is_the_released_code() -> None:
    """process_layers sets the scores of blocks 0, 1 and L-1 to inf, sorts by (score, index) and drops the
    lowest ranks first: the same blocks as the fixed rule, ties to the lower index."""
    d = np.r_[-0.5, -0.4, -0.3, 0.5, 0.01, 0.3, 0.01, 0.4, 0.2, 0.0]
    sel = entrodrop_select(d, 3)
    assert sel.info["s_start"] == 2 and sel.info["s_start_source"] == "fixed"
    assert sel.info["protected"] == [0, 1, 9]
    ranked = sorted(((v if i not in (0, 1, 9) else np.inf, i) for i, v in enumerate(d)))
    assert sel.blocks == tuple(sorted(i for _, i in ranked[:3])) == (2, 4, 6)
