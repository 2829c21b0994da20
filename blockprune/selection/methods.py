"""The method registry and the one front door, ``select``.

Each method is registered under a stable name (what configs and MLflow record) with a small spec
saying which input it reads, so a driver knows what to compute before calling it:

- ``needs="block"``: one score per block (BI, ΔH, single-block MI, relative magnitude);
- ``needs="run"``: a run scorer ``score_run(tuple) -> float`` (angular distance, run MI);
- ``needs="none"``: position only (sequential, reverse).

``prunes`` says whether the lowest or highest scores go (``None`` for positional baselines);
``score`` names the score the method expects, the key it gets in ``PrunePlan.scores``.

The spec is the single source of truth about a method: which kind of estimator it takes and its
default, which streaming statistic serves it when no estimator is named, and how reports label and
group it. Adding a method is one :func:`register_method` call; drivers, validation, sweeps and the study
read these facts instead of keeping their own tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from blockprune.registry import Registry
from blockprune.selection.entrodrop import StageRule, entrodrop_select
from blockprune.selection.fbs import brute_force_select, fast_block_select
from blockprune.selection.result import Selection
from blockprune.selection.scorer import BatchRunScorer, CachedRunScorer, RunScoreFn, is_run_scorer
from blockprune.selection.topk import (
    angular_contiguous,
    check_block_scores,
    check_n_blocks,
    check_n_prune,
    mi_greedy,
    reverse_order,
    select_lowest,
    sequential,
)

Needs = Literal["block", "run", "none"]
Prunes = Literal["lowest", "highest"]
EstimatorKind = Literal["entropy", "mi", "similarity"]
Family = Literal["base", "entrodrop", "mi"]
Scorer = RunScoreFn | BatchRunScorer


@dataclass(frozen=True)
class MethodSpec:
    """What a selection method needs and what it does with it.

    ``fn`` has one signature for all methods, so drivers can call any of them the same way:
    ``fn(n_blocks, n_prune, *, block_scores, score_run, s_start[, stage_rule]) -> Selection`` (inputs a
    method does not need are ignored); prefer :func:`select`, which validates first.
    """

    name: str
    needs: Needs
    prunes: Prunes | None
    score: str | None
    fn: Callable[..., Selection]
    description: str = ""
    estimator_kind: EstimatorKind | None = None  # the estimators it accepts (None: it takes none)
    default_estimator: str | None = None  # used when the user names none
    stat: str | None = None  # streaming statistic that serves it when no estimator is named
    label: str = ""  # how reports name it
    family: Family = "base"  # which paper's panel it belongs to in reports
    show_estimator: bool = False  # reports name its estimator even when it is the default

    @property
    def layer_only(self) -> bool:
        """Run methods score runs of whole layers, so they have no attention/MLP form."""
        return self.needs == "run"


METHODS: Registry[MethodSpec] = Registry("selection method")


def register_method(
    name: str, needs: Needs, prunes: Prunes | None, score: str | None, description: str, **facts: object
) -> Callable[[Callable[..., Selection]], Callable[..., Selection]]:
    """Decorator: register a selection function under ``name`` with its :class:`MethodSpec` facts.

    This one entry is all a new method needs: the CLI, sweep validation, scoring and the study's labels
    read the spec (``METHODS.unregister(name)`` removes it again)."""

    def deco(fn: Callable[..., Selection]) -> Callable[..., Selection]:
        METHODS.register(name, MethodSpec(name, needs, prunes, score, fn, description, **facts))  # type: ignore[arg-type]
        return fn

    return deco


@register_method("shortgpt", "block", "lowest", "bi", "ShortGPT: drop the lowest Block Influence",
           estimator_kind="similarity", stat="bi", label="ShortGPT (BI)")
def _shortgpt(n_blocks: int, n_prune: int, *, block_scores: list[float], **_: object) -> Selection:
    return select_lowest(block_scores, n_prune)


@register_method("sequential", "none", None, None, "baseline: blocks 1..k",
           label="sequential")
def _sequential(n_blocks: int, n_prune: int, **_: object) -> Selection:
    return sequential(n_blocks, n_prune)


@register_method("reverse", "none", None, None, "baseline: blocks L-1-k..L-2",
           label="reverse")
def _reverse(n_blocks: int, n_prune: int, **_: object) -> Selection:
    return reverse_order(n_blocks, n_prune)


@register_method("relative_magnitude", "block", "lowest", "relative_magnitude", "baseline: lowest ‖f(x)‖/‖x+f(x)‖",
           stat="relmag", label="relative magnitude")
def _relative_magnitude(n_blocks: int, n_prune: int, *, block_scores: list[float], **_: object) -> Selection:
    return select_lowest(block_scores, n_prune)


@register_method(
    "angular", "run", "lowest", "angular_distance", "Gromov et al.: contiguous run of lowest angular distance",
    estimator_kind="similarity", default_estimator="angular", label="angular distance",
)
def _angular(n_blocks: int, n_prune: int, *, score_run: Scorer, **_: object) -> Selection:
    return angular_contiguous(n_blocks, n_prune, score_run)


@register_method(
    "entrodrop", "block", "lowest", "delta_h",
    "EntroDrop as its released code runs it: ΔH per calibration window averaged over windows, blocks 0, 1 "
    "and L−1 protected (stage_rule 'fixed'; 'curve' detects the end of the entropy-decreasing stage from the "
    "ΔH curve instead), lowest ΔH dropped. Default estimator entropy.knn_window (k = 25): the estimator of "
    "LlamaEntroDrop.py, the only model class main.py runs (the Mistral file uses 80-bin buckets). The "
    "paper leaves open the calibration set size, window length and which estimator is primary; the code "
    "ranks the attention sub-block score H(h + Attn(h)) − H(h), so granularity 'attention' is its setting",
    estimator_kind="entropy", default_estimator="entropy.knn_window", label="EntroDrop", family="entrodrop",
    show_estimator=True,
)
def _entrodrop(
    n_blocks: int, n_prune: int, *, block_scores: list[float], s_start: int | None = None,
    stage_rule: StageRule | None = None, **_: object,
) -> Selection:
    return entrodrop_select(block_scores, n_prune, s_start=s_start, stage_rule=stage_rule or "fixed")


_MI_DEFAULT = (
    "Default estimator mi.perdim: the mean over hidden coordinates of scikit-learn's 1-D KSG MI (k = 3), "
    "the reading that reproduces the magnitudes of the paper's Table 6 (0.4-1.3 nats per block of a 4096-wide "
    "model; the paper names scikit-learn). The multivariate mi.ksg measures a different quantity. Runs of "
    "blocks are scored by I(input of the first; output of the last)."
)


@register_method("mi_greedy", "block", "highest", "mi", "MI-PRUN greedy: highest single-block MI. " + _MI_DEFAULT,
                 estimator_kind="mi", default_estimator="mi.perdim", label="MI-PRUN greedy", family="mi")
def _mi_greedy(n_blocks: int, n_prune: int, *, block_scores: list[float], **_: object) -> Selection:
    return mi_greedy(block_scores, n_prune)


@register_method("mi_fbs", "run", "highest", "mi",
                 "MI-PRUN Fast-Block-Select over contiguous runs. " + _MI_DEFAULT,
                 estimator_kind="mi", default_estimator="mi.perdim", label="MI-PRUN FBS", family="mi")
def _mi_fbs(n_blocks: int, n_prune: int, *, score_run: Scorer, **_: object) -> Selection:
    return fast_block_select(n_blocks, n_prune, score_run)


@register_method("mi_brute", "run", "highest", "mi",
                 "MI-PRUN brute force: exact scores of every run ≤ N. " + _MI_DEFAULT,
                 estimator_kind="mi", default_estimator="mi.perdim", label="MI-PRUN brute force", family="mi")
def _mi_brute(n_blocks: int, n_prune: int, *, score_run: Scorer, **_: object) -> Selection:
    return brute_force_select(n_blocks, n_prune, score_run)


def select(
    method: str,
    n_blocks: int,
    n_prune: int,
    *,
    block_scores: Sequence[float] | None = None,
    score_run: Scorer | None = None,
    s_start: int | None = None,
    stage_rule: StageRule | None = None,
) -> Selection:
    """Run a registered method after checking every input, before any scoring work starts.

    Raises ``ValueError`` for n_prune < 1 or ≥ n_blocks, block scores of the wrong length or with
    NaN/inf, a missing scorer, or ``s_start`` / ``stage_rule`` given to a method other than EntroDrop; an unknown
    method raises ``UnknownNameError`` listing the known names. A ``block`` method given only a run
    scorer gets its block scores from the single-block runs (counted in ``evaluations``).
    """
    spec = METHODS.get(method)
    check_n_blocks(n_blocks)
    check_n_prune(n_prune, n_blocks - 1, f"of {n_blocks} blocks may go (at least one must stay)")
    n_blocks, n_prune = int(n_blocks), int(n_prune)
    if s_start is not None and method != "entrodrop":
        raise ValueError(f"s_start only applies to 'entrodrop', not {method!r}")
    if stage_rule is not None and method != "entrodrop":
        raise ValueError(f"stage_rule only applies to 'entrodrop', not {method!r}")
    if score_run is not None and not is_run_scorer(score_run):
        raise ValueError(f"score_run must be callable or have score_runs(), got {type(score_run).__name__}")
    scores: list[float] | None = None
    evaluations = 0
    run_scores: dict[tuple[int, ...], float] = {}
    if spec.needs == "block":
        if block_scores is not None:
            scores = check_block_scores(block_scores, n_blocks)
        elif score_run is not None:
            cached = CachedRunScorer(score_run, n_blocks)
            cached.prefetch((i,) for i in range(n_blocks))
            scores = [cached((i,)) for i in range(n_blocks)]
            evaluations, run_scores = cached.evaluations, dict(cached.cache)
        else:
            raise ValueError(f"method {method!r} needs block_scores ({spec.score!r}, one per block)")
    elif spec.needs == "run" and score_run is None:
        raise ValueError(f"method {method!r} needs a run scorer score_run ({spec.score!r} of a run)")
    elif block_scores is not None and spec.needs == "run":
        check_block_scores(block_scores, n_blocks)  # not used, but a bad array is still a bug upstream
    extra = {} if stage_rule is None else {"stage_rule": stage_rule}
    sel = spec.fn(n_blocks, n_prune, block_scores=scores, score_run=score_run, s_start=s_start, **extra)
    info = {**sel.info, "method": method}
    if evaluations:
        return replace(sel, evaluations=evaluations, run_scores=run_scores, info=info)
    return replace(sel, info=info)
