"""From the study's MLflow runs to the numbers the report prints: no MLflow, no formatting here.

Definitions (the report repeats them):

* accuracy of a task = ``acc_norm`` where the task defines it, else ``acc``; average accuracy = the mean over
  the study's tasks, only for a plan with every task measured;
* chance / constant = accuracy of a uniform random guess / of always the best answer position, on the same
  documents (the ``baseline`` run); average over the tasks as for a model;
* rel. = average accuracy of the pruned model / of the dense model × 100 (ShortGPT's "rel." column);
* ppl× = geometric mean over the evaluation corpora of (pruned perplexity / dense perplexity);
* stability = mean pairwise Jaccard |A∩B|/|A∪B| of the dropped blocks of one method × n_prune across
  calibrations (all pairs; pairs that differ only in seed; pairs that differ only in corpus).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from blockprune.selection.methods import METHODS
from blockprune.study.record import (
    LM_EVAL_CPU,
    RunRecord,
    baseline_key,
    is_note_tag,
    method_id,
    parse_blocks,
    plan_key,
)
from blockprune.tracking.figures import jaccard

# Parameter sets the study runs besides an estimator's defaults, as the report names them.
VARIANTS = {"proj=none,standardize=none": "raw scale"}


def display(mid: str) -> str:
    """How the report names a method id (``method``, ``method/estimator`` or ``method/estimator[params]``): the
    method's label from its spec, then the estimator's label where the spec shows it or it is not the method's
    default, then a named parameter variant. An id the specs cannot name (an unregistered method, an unnamed
    parameter set) is shown as it is: it still says exactly what ran."""
    base, _, params = mid.partition("[")
    method, _, estimator = base.partition("/")
    variant = VARIANTS.get(params.removesuffix("]")) if params else None
    if method not in METHODS or (params and variant is None):
        return mid
    spec = METHODS.get(method)
    label = spec.label or method
    if estimator and (spec.show_estimator or estimator != spec.default_estimator):
        label += f" · {_estimator_label(estimator)}"
    return f"{label} · {variant}" if variant else label


def _estimator_label(name: str) -> str:
    # Imported here: the estimators load scipy (about a second), needed only when a report names an estimator.
    from blockprune.estimators import ESTIMATORS

    return ESTIMATORS.get(name).label if name in ESTIMATORS else name


def family(mid: str) -> str:
    """Which paper a report row belongs to (its method spec's ``family``): one figure panel each, so 14 methods
    stay readable. Unregistered methods count as baselines."""
    method = mid.partition("[")[0].partition("/")[0]
    return METHODS.get(method).family if method in METHODS else "base"


def task_accuracy(metrics: dict[str, float], task: str) -> float | None:
    v = metrics.get(f"{task}.acc_norm", metrics.get(f"{task}.acc"))
    return None if v is None else float(v)


def geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


@dataclass
class Selection:
    run_id: str
    model: str
    corpus: str
    seed: int
    reference: bool
    method: str  # method id (method/estimator)
    granularity: str
    n_prune: int
    blocks: tuple[int, ...]
    plan_key: str
    scoring_seconds: float
    exact_scores: int


@dataclass
class Evaluation:
    run_id: str
    plan_key: str
    metrics: dict[str, float]
    where: dict[str, str] = field(default_factory=dict)  # where its numbers were measured (lm-eval CPU, rechecks)

    def ppl(self, corpus: str) -> float | None:
        return self.metrics.get(f"ppl.{corpus}")


@dataclass
class Row:
    """One method at one (model, granularity, n_prune): reference plan + what all calibrations say."""

    method: str
    blocks: tuple[int, ...]
    selection_run: str
    evaluation_run: str | None
    ppl: dict[str, float]
    ppl_ratio: float | None
    ppl_ratio_all: list[float]
    accuracy: dict[str, float]
    avg_acc: float | None
    rel: float | None
    stability: float | None
    n_calibrations: int
    acc_all: list[float] = field(default_factory=list)  # avg accuracy of every calibration's plan, where measured
    plan_key: str = ""  # the reference plan's evaluation key


@dataclass
class Study:
    selections: list[Selection]
    evaluations: dict[str, Evaluation]
    calibrations: list[RunRecord]
    tasks: list[str]
    corpora: list[str]
    models: list[str] = field(default_factory=list)
    infeasible: list[RunRecord] = field(default_factory=list)  # selections a method could not make
    baseline: Evaluation | None = None  # chance / best constant answer on the lm-eval documents
    names: dict[str, str] = field(default_factory=dict)  # method id → the spec's display name for its row
    heals: list[RunRecord] = field(default_factory=list)  # finished healing runs (kind "heal")

    def name(self, mid: str) -> str:
        """How the report names a method id: the spec's ``display`` name where it gives one, else :func:`display`."""
        return self.names.get(mid) or display(mid)

    @classmethod
    def from_runs(cls, runs: Sequence[RunRecord], tasks: Sequence[str], corpora: Sequence[str],
                  models: Sequence[str], tasks_tag: str | None = None, docs_tag: str | None = None,
                  names: dict[str, str] | None = None, order: Sequence[str] = ()) -> Study:
        """``tasks_tag``: use a run's lm-eval metrics only when its ``tasks_done`` tag is this one (results of
        other limits or another lm-eval dtype are not mixed in; the study redoes them). ``docs_tag``: use only
        the answer baselines of these documents (the tasks and limits, whatever the dtype). ``names``: the
        spec's display names of method ids. ``order``: method ids in the order the spec lists them, the
        order of the report's rows (others follow in the order they were run): a method added to a finished
        study sits where its spec puts it, not last."""
        sels: list[Selection] = []
        evals: dict[str, Evaluation] = {}
        cals: dict[str, RunRecord] = {}
        infeasible: list[RunRecord] = []
        heals: dict[str, RunRecord] = {}
        baseline: Evaluation | None = None
        docs_key = None if docs_tag is None else baseline_key(docs_tag)
        for r in sorted(runs, key=lambda r: r.metrics.get("logged_at", 0.0)):
            t = r.tags
            if r.kind == "selection" and ("infeasible" in t or "blocks" not in t):
                infeasible.append(r)  # a selection without a plan is one the method could not make
            elif r.kind == "selection":
                sels.append(Selection(
                    r.run_id, t["model"], t["corpus"], int(t["seed"]), t.get("reference") == "1",
                    t.get("label") or method_id(t["method"], t.get("estimator")), t["granularity"], int(t["n_prune"]),
                    parse_blocks(t["blocks"]), t["plan_key"], r.metrics.get("scoring_seconds", float("nan")),
                    int(r.metrics.get("exact_scores", 0))))
            elif r.kind == "evaluation":
                stale = tasks_tag is not None and t.get("tasks_done") != tasks_tag
                metrics = {k: v for k, v in r.metrics.items() if not (stale and k.split(".", 1)[0] in tasks)}
                where = {k: v for k, v in t.items() if is_note_tag(k) and not (stale and k == LM_EVAL_CPU)}
                evals[r.key] = Evaluation(r.run_id, r.key, metrics, where)
            elif r.kind == "calibration":
                cals[r.key] = r  # a calibration resumed with new trials has one run per session; same store
            elif r.kind == "baseline" and docs_key in (None, r.key):
                baseline = Evaluation(r.run_id, r.key, dict(r.metrics))
            elif r.kind == "heal":
                heals[r.key] = r  # the newest run of a key wins, as everywhere
        rank = {mid: i for i, mid in enumerate(dict.fromkeys(order))}  # a method's first place counts
        sels.sort(key=lambda s: rank.get(s.method, len(rank)))  # stable: run order within a method
        return cls(sels, evals, list(cals.values()), list(tasks), list(corpora), list(models), infeasible,
                   baseline, dict(names or {}), list(heals.values()))

    # ------------------------------------------------------------------------------------------- dense
    def dense(self, model: str) -> Evaluation | None:
        return self.evaluations.get(plan_key(model, "", None))

    def avg_accuracy(self, ev: Evaluation | None) -> float | None:
        if ev is None or not self.tasks:
            return None
        accs = [task_accuracy(ev.metrics, t) for t in self.tasks]
        return None if any(a is None for a in accs) else sum(accs) / len(accs)  # type: ignore[arg-type]

    def baseline_accuracy(self, what: str) -> tuple[dict[str, float], float | None]:
        """Per task and average (over all the study's tasks, or None) of the ``baseline`` run's ``what``:
        "chance" or "constant"."""
        if self.baseline is None:
            return {}, None
        per = {t: v for t in self.tasks if (v := self.baseline.metrics.get(f"{t}.{what}")) is not None}
        return per, (sum(per.values()) / len(per) if per and len(per) == len(self.tasks) else None)

    def accuracy_noise(self) -> tuple[float, float] | None:
        """Standard errors at p = 0.5 of one task's accuracy (median question count) and of the average over
        the tasks, from the question counts lm-eval reported for a dense model. Why: with task limits of tens
        of questions, accuracy differences below these are ties, and the report has to say how large they are
        for the limits this study ran with (``None`` before any dense lm-eval)."""
        for m in self.models:
            ev = self.dense(m)
            ns = [ev.metrics.get(f"{t}.n") for t in self.tasks] if ev is not None else []
            if ns and all(n is not None and n > 0 for n in ns):
                one = 0.5 / math.sqrt(sorted(ns)[len(ns) // 2])  # type: ignore[arg-type]
                return one, math.sqrt(sum(0.25 / n for n in ns)) / len(ns)  # type: ignore[operator]
        return None

    def ppl_ratio(self, model: str, ev: Evaluation | None) -> float | None:
        dense = self.dense(model)
        if ev is None or dense is None:
            return None
        pairs = [(ev.ppl(c), dense.ppl(c)) for c in self.corpora]
        if any(p is None or d is None for p, d in pairs):
            return None
        return geomean([p / d for p, d in pairs])  # type: ignore[operator]

    def smallest_within(self, model: str, budget: float) -> tuple[Row, str, float] | None:
        """The reference plan with the fewest parameters left whose ppl× is at most ``budget``, over every
        method, granularity and n_prune (sizes within 0.1% of the dense model's are ties, and the lower ppl×
        wins them), with its granularity and its parameter
        count ÷ the dense model's. Why: a user starts from the perplexity they can afford, not from a
        method."""
        dense = self.dense(model)
        full = dense.metrics.get("params_total") if dense else None
        if not full:
            return None
        best: tuple[float, float, Row, str, float] | None = None
        for gran in ("layer", "attention"):
            for n in self.cells(model, gran):
                for r in self.rows(model, gran, n):
                    ev = self.evaluations.get(r.plan_key)
                    params = ev.metrics.get("params_total") if ev else None
                    if r.ppl_ratio is None or r.ppl_ratio > budget or params is None:
                        continue
                    kept = round(params / full, 3)  # norms' few weights apart, equal sizes are ties
                    if best is None or (kept, r.ppl_ratio) < best[:2]:
                        best = (kept, r.ppl_ratio, r, gran, params / full)
        return None if best is None else (best[2], best[3], best[4])

    def measured_plans(self, model: str) -> list[tuple[Evaluation, float]]:
        """Every pruned plan of a model (any calibration) with both ppl× and all task accuracies."""
        dense_key = plan_key(model, "", None)
        out = []
        for k, ev in sorted(self.evaluations.items()):
            if k.startswith(f"{model}|") and k != dense_key and self.avg_accuracy(ev) is not None:
                ratio = self.ppl_ratio(model, ev)
                if ratio is not None:
                    out.append((ev, ratio))
        return out

    def ppl_accuracy_correlation(self, model: str, plans: list[tuple[Evaluation, float]] | None = None
                                 ) -> dict[str, float | None]:
        """Spearman's ρ between ppl× and each task's accuracy (and the average, key "avg") over the model's
        measured plans. Why: where perplexity ranks plans as a task does, the cheap number can stand in for
        the expensive one; a task with ρ near 0 does not react to pruning at this model size. ``plans``: the
        model's ``measured_plans`` when the caller has them already."""
        plans = self.measured_plans(model) if plans is None else plans
        ratios = [r for _, r in plans]
        out: dict[str, float | None] = {t: spearman(ratios, [task_accuracy(ev.metrics, t) or 0.0 for ev, _ in plans])
                                        for t in self.tasks}
        out["avg"] = spearman(ratios, [self.avg_accuracy(ev) or 0.0 for ev, _ in plans])
        return out

    # ------------------------------------------------------------------------------------------ tables
    def cells(self, model: str, granularity: str) -> list[int]:
        return sorted({s.n_prune for s in self.selections if s.model == model and s.granularity == granularity})

    def methods(self, model: str, granularity: str) -> list[str]:
        return list(dict.fromkeys(s.method for s in self.selections
                                  if s.model == model and s.granularity == granularity))

    def plans(self, model: str, granularity: str, method: str, n_prune: int) -> list[Selection]:
        return [s for s in self.selections if s.model == model and s.granularity == granularity
                and s.method == method and s.n_prune == n_prune]

    def rows(self, model: str, granularity: str, n_prune: int) -> list[Row]:
        dense = self.dense(model)
        dense_acc = self.avg_accuracy(dense)
        out = []
        for mid in self.methods(model, granularity):
            plans = self.plans(model, granularity, mid, n_prune)
            ref = next((s for s in plans if s.reference), None)
            if ref is None:
                continue
            ev = self.evaluations.get(ref.plan_key)
            accs = {t: a for t in self.tasks if ev and (a := task_accuracy(ev.metrics, t)) is not None}
            avg = self.avg_accuracy(ev)
            ratios = [r for s in plans if (r := self.ppl_ratio(model, self.evaluations.get(s.plan_key))) is not None]
            accs_all = [a for s in plans if (a := self.avg_accuracy(self.evaluations.get(s.plan_key))) is not None]
            out.append(Row(
                method=mid, blocks=ref.blocks, selection_run=ref.run_id, evaluation_run=ev.run_id if ev else None,
                ppl={c: v for c in self.corpora if ev and (v := ev.ppl(c)) is not None},
                ppl_ratio=self.ppl_ratio(model, ev), ppl_ratio_all=ratios, accuracy=accs, avg_acc=avg,
                rel=None if avg is None or not dense_acc else 100.0 * avg / dense_acc,
                stability=stability([s.blocks for s in plans]) if len(plans) > 1 else None,
                n_calibrations=len(plans), acc_all=accs_all, plan_key=ref.plan_key))
        return out

    def stability_split(self, model: str, granularity: str, method: str, n_prune: int) -> dict[str, float | None]:
        """Mean Jaccard over all pairs, over pairs with the same corpus (seed differs), same seed (corpus differs)."""
        plans = self.plans(model, granularity, method, n_prune)
        pairs = list(itertools.combinations(plans, 2))
        seed_pairs = [(a, b) for a, b in pairs if a.corpus == b.corpus]
        corpus_pairs = [(a, b) for a, b in pairs if a.seed == b.seed]

        def mean(ps: list[tuple[Selection, Selection]]) -> float | None:
            return sum(jaccard(a.blocks, b.blocks) for a, b in ps) / len(ps) if ps else None

        return {"all": mean(pairs), "seeds": mean(seed_pairs), "corpora": mean(corpus_pairs)}

    def mi_estimators(self, model: str | None = None) -> list[str]:
        """The MI estimators the study ran MI-PRUN with at their default parameters, in order of first use:
        one row each in the cost section's count of exact MI scores."""
        ests = (s.method.partition("/")[2] for s in self.selections if (model is None or s.model == model)
                and s.granularity == "layer" and "[" not in s.method and family(s.method) == "mi")
        return [e for e in dict.fromkeys(ests) if e]

    def exact_scores(self, model: str, n_prune: int, estimator: str = "mi.ksg") -> dict[str, float]:
        """Mean exact MI scores per MI-PRUN method with ``estimator`` (over calibrations) at one n_prune."""
        out = {}
        for method in ("mi_greedy", "mi_fbs", "mi_brute"):
            mid = f"{method}/{estimator}"
            vals = [s.exact_scores for s in self.plans(model, "layer", mid, n_prune)]
            if vals:
                out[mid] = sum(vals) / len(vals)
        return out


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank (as Spearman's coefficient needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i : j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (Pearson's of the tie-averaged ranks); None when it is undefined
    (fewer than 3 pairs, or one side constant)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} x values, {len(y)} y values")
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def stability(blocks: Sequence[Sequence[int]]) -> float:
    pairs = list(itertools.combinations(blocks, 2))
    return sum(jaccard(a, b) for a, b in pairs) / len(pairs) if pairs else 1.0
