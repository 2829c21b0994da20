"""The method registry and the ``select`` front door: dispatch and input checks before any work."""

from __future__ import annotations

import math

import pytest

from blockprune.registry import UnknownNameError
from blockprune.selection import METHODS, MethodSpec, select
from blockprune.selection.synthetic import TableScorer, dpi_run_table

pytestmark = pytest.mark.unit

NAMES = {
    "shortgpt": ("block", "lowest"),
    "sequential": ("none", None),
    "reverse": ("none", None),
    "relative_magnitude": ("block", "lowest"),
    "angular": ("run", "lowest"),
    "entrodrop": ("block", "lowest"),
    "mi_greedy": ("block", "highest"),
    "mi_fbs": ("run", "highest"),
    "mi_brute": ("run", "highest"),
}


def test_registry_names_and_specs() -> None:
    assert set(METHODS.names()) == set(NAMES)
    for name, (needs, prunes) in NAMES.items():
        spec = METHODS.get(name)
        assert isinstance(spec, MethodSpec)
        assert (spec.name, spec.needs, spec.prunes) == (name, needs, prunes)
        assert callable(spec.fn)
    with pytest.raises(AttributeError):
        METHODS.get("shortgpt").needs = "run"  # type: ignore[misc]


def test_dispatch() -> None:
    n = 16
    table = dpi_run_table(n, seed=1)
    singles = [table[(i,)] for i in range(n)]
    scorer = TableScorer(table)
    assert select("shortgpt", n, 2, block_scores=singles).blocks == tuple(
        sorted(sorted(range(n), key=lambda i: (singles[i], i))[:2])
    )
    assert select("mi_greedy", n, 2, block_scores=singles).blocks == tuple(
        sorted(sorted(range(n), key=lambda i: (-singles[i], i))[:2])
    )
    assert select("sequential", n, 3).blocks == (1, 2, 3)
    assert select("reverse", n, 3).blocks == (12, 13, 14)
    assert select("relative_magnitude", n, 1, block_scores=singles).n_prune == 1
    assert select("angular", n, 3, score_run=scorer).evaluations == n - 2
    fbs = select("mi_fbs", n, 4, score_run=scorer)
    brute = select("mi_brute", n, 4, score_run=scorer)
    assert fbs.info["method"] == "mi_fbs" and brute.info["method"] == "mi_brute"
    assert brute.evaluations == 16 + 15 + 14 + 13
    delta_h = [-0.3, -0.2] + [0.1 + 0.01 * i for i in range(n - 2)]
    ent = select("entrodrop", n, 2, block_scores=delta_h)
    assert ent.blocks == (2, 3) and ent.info["s_start"] == 2
    assert select("entrodrop", n, 2, block_scores=delta_h, s_start=5).blocks == (5, 6)
    falling = [-0.3, -0.2, -0.1] + [0.1 + 0.01 * i for i in range(n - 3)]
    assert select("entrodrop", n, 1, block_scores=falling).blocks == (2,)  # fixed rule: 0, 1, L-1 kept
    curve = select("entrodrop", n, 1, block_scores=falling, stage_rule="curve")
    assert curve.blocks == (3,) and curve.info["s_start_source"] == "detected"


def test_block_method_may_read_single_runs_from_a_scorer() -> None:
    table = dpi_run_table(12, seed=4)
    sel = select("mi_greedy", 12, 3, score_run=TableScorer(table))
    assert sel.evaluations == 12
    assert sel.blocks == select("mi_greedy", 12, 3, block_scores=[table[(i,)] for i in range(12)]).blocks


class _Spy(TableScorer):
    def __init__(self) -> None:
        super().__init__({}, default=0.5)


@pytest.mark.parametrize(
    ("method", "n_prune", "kwargs", "match"),
    [
        ("mi_fbs", 0, {}, "n_prune"),
        ("mi_fbs", 8, {}, "cannot drop 8"),
        ("mi_fbs", 9, {}, "cannot drop 9"),
        ("mi_fbs", 2.0, {}, "n_prune"),
        ("shortgpt", 2, {"block_scores": [0.1] * 7}, "expected 8 block scores"),
        ("shortgpt", 2, {"block_scores": [0.1] * 7 + [math.nan]}, r"blocks \[7\]"),
        ("shortgpt", 2, {}, "needs block_scores"),
        ("entrodrop", 2, {}, "needs block_scores"),
        ("angular", 2, {"score_run": None}, "needs a run scorer"),
        ("mi_brute", 2, {"score_run": 3}, "score_run must be callable"),
        ("mi_fbs", 2, {"s_start": 2}, "s_start only applies"),
        ("shortgpt", 2, {"block_scores": [0.1] * 8, "stage_rule": "curve"}, "stage_rule only applies"),
        ("entrodrop", 2, {"block_scores": [0.1] * 8, "stage_rule": "paper"}, "stage_rule must be"),
    ],
)
def test_bad_inputs_fail_before_work(method: str, n_prune: int, kwargs: dict, match: str) -> None:
    spy = _Spy()
    kwargs = {"score_run": spy, **kwargs} if method in ("mi_fbs", "mi_brute", "angular") else kwargs
    with pytest.raises(ValueError, match=match):
        select(method, 8, n_prune, **kwargs)
    assert spy.asked == []


def test_unknown_method_lists_known_names() -> None:
    with pytest.raises(UnknownNameError, match="mi_fbs"):
        select("mi_fast", 8, 2)
    with pytest.raises(ValueError, match="n_blocks"):
        select("sequential", 1, 1)
