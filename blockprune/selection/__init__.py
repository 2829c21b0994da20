"""Which blocks to drop: top-k, EntroDrop stages, Fast-Block-Select, brute force; PrunePlan.

Pure Python (+ numpy): no torch, no Ray, no models. Scores come in as numbers or through a run
scorer ``score_run(tuple) -> float``; every algorithm returns a :class:`Selection` that says how
many exact run scores it asked for.
"""

from blockprune.selection.entrodrop import (
    StageDetection,
    detect_entropy_stage,
    detect_entropy_stage_end,
    entrodrop_select,
)
from blockprune.selection.fbs import (
    best_combination,
    brute_force_evaluations,
    brute_force_select,
    contiguous_groups,
    fast_block_select,
    top_k,
)
from blockprune.selection.methods import METHODS, MethodSpec, register_method, select
from blockprune.selection.plan import CalibrationSettings, PrunePlan, parse_run_key, run_key
from blockprune.selection.result import Selection
from blockprune.selection.scorer import BatchRunScorer, CachedRunScorer, check_run
from blockprune.selection.topk import (
    angular_contiguous,
    mi_greedy,
    n_prune_from_ratio,
    reverse_order,
    select_highest,
    select_lowest,
    sequential,
)

__all__ = [
    "METHODS",
    "BatchRunScorer",
    "CachedRunScorer",
    "CalibrationSettings",
    "MethodSpec",
    "PrunePlan",
    "Selection",
    "StageDetection",
    "angular_contiguous",
    "best_combination",
    "brute_force_evaluations",
    "brute_force_select",
    "check_run",
    "contiguous_groups",
    "detect_entropy_stage",
    "detect_entropy_stage_end",
    "entrodrop_select",
    "fast_block_select",
    "mi_greedy",
    "n_prune_from_ratio",
    "parse_run_key",
    "register_method",
    "reverse_order",
    "run_key",
    "select",
    "select_highest",
    "select_lowest",
    "sequential",
    "top_k",
]
