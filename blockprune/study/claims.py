"""The report's generated sentences: pure functions from a :class:`Study` to Markdown lines.

Winners per cell, the three papers' claims counted (on the reference calibration and over all
calibrations), accuracy wins against the lm-eval noise, how close accuracies sit to the answer
baselines, and whether perplexity ranks plans as accuracy does. Nothing here is typed by hand: every
sentence is counted from the same rows the tables print.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from blockprune.selection.methods import METHODS
from blockprune.study.markdown import fmt
from blockprune.study.record import plan_key
from blockprune.study.tables import Row, Study, family, geomean, task_accuracy


def noise_text(study: Study) -> str:
    noise = study.accuracy_noise()
    if noise is None:
        return ""
    return (f" With the lm-eval limits above, one task's accuracy has a standard error of about ±{noise[0]:.3f} "
            f"and the average about ±{noise[1]:.3f} (binomial, p = 0.5): read accuracy differences below that as "
            "ties; perplexity is the sharper signal.")


@dataclass
class ClaimCounts:
    """The papers' claims per (model, granularity, n_prune) cell of the reference plans: ``claims`` holds, per
    claim, one bool per cell where it can be judged (lower perplexity than ShortGPT / than EntroDrop);
    ``acc`` the best average accuracy minus ShortGPT's. Keys: ``entro``, ``mi``, ``mi_vs_entro`` for the best
    of every reading of a method, the same with ``_ref`` for the method as its authors ran it."""

    claims: dict[str, list[bool]] = field(default_factory=lambda: {k: [] for k in (
        "entro", "mi", "mi_vs_entro", "entro_ref", "mi_ref", "mi_vs_entro_ref")})
    acc: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in (
        "entro", "mi", "entro_ref", "mi_ref")})
    wins: list[tuple[str, str, int, Row, Row]] = field(default_factory=list)  # (model, gran, n, best, ShortGPT)
    cells: list[list[Row]] = field(default_factory=list)
    winners: list[tuple[str, str, int, Row, Row | None]] = field(default_factory=list)  # lowest ppl, best acc

    @property
    def authors(self) -> bool:
        """Whether the study has rows of the methods as their authors ran them."""
        return bool(self.claims["entro_ref"] or self.claims["mi_ref"])


def count_claims(study: Study) -> ClaimCounts:
    """Every cell's winners and the papers' claims, counted from the same rows the tables print."""
    out = ClaimCounts()
    claims, claims_acc = out.claims, out.acc
    for m in study.models:
        for gran in ("layer", "attention"):
            for n in study.cells(m, gran):
                rows = study.rows(m, gran, n)
                out.cells.append(rows)
                best = _best(rows, "ppl_ratio")
                if best is None:
                    continue
                out.winners.append((m, gran, n, best, _best(rows, "avg_acc")))
                by = {r.method: r for r in rows}
                sg = by.get("shortgpt")
                entro, mi = ([r for r in rows if family(r.method) == f and r.ppl_ratio is not None]
                             for f in ("entrodrop", "mi"))
                groups = {"entro": entro, "mi": mi, "entro_ref": [r for r in entro if reference_reading(r.method)],
                          "mi_ref": [r for r in mi if reference_reading(r.method)]}
                if sg and sg.ppl_ratio is not None:
                    for fam, group in groups.items():
                        if group:
                            claims[fam].append(min(r.ppl_ratio for r in group) < sg.ppl_ratio)  # type: ignore[type-var]
                    if sg.avg_acc is not None:
                        for fam, group in groups.items():
                            scored = [r for r in group if r.avg_acc is not None]
                            if scored:
                                top = max(scored, key=lambda r: r.avg_acc)  # type: ignore[arg-type,return-value]
                                claims_acc[fam].append(top.avg_acc - sg.avg_acc)  # type: ignore[operator]
                                if fam in ("entro", "mi"):
                                    out.wins.append((m, gran, n, top, sg))
                for suffix in ("", "_ref"):
                    a, b = groups["mi" + suffix], groups["entro" + suffix]
                    if a and b:
                        claims["mi_vs_entro" + suffix].append(min(r.ppl_ratio for r in a)  # type: ignore[type-var]
                                                              < min(r.ppl_ratio for r in b))  # type: ignore[type-var]
    return out


def summary_section(study: Study) -> list[str]:
    """Sentences computed from the rows: winners per cell and the papers' claims, counted."""
    lines = ["## Summary (generated from the tables below)", ""]
    counted = count_claims(study)
    claims, claims_acc, wins, cells = counted.claims, counted.acc, counted.wins, counted.cells
    for m, gran, n, best, best_acc in counted.winners:
        text = f"- **{m}, {n} {gran}s**: lowest perplexity: {study.name(best.method)} (ppl× {fmt(best.ppl_ratio)})"
        if best_acc is not None:
            text += f"; best average accuracy: {study.name(best_acc.method)} ({fmt(best_acc.avg_acc, 3)})"
        lines.append(text)
    lines.append("")

    def count(v: list[bool]) -> str:
        return f"{sum(v)} of {len(v)}" if v else "no"

    noise = study.accuracy_noise()

    def count_acc(diffs: list[float]) -> str:
        """Wins by accuracy, and how many of them exceed the noise of a limited lm-eval run."""
        if not diffs:
            return ""
        text = f"; by average accuracy in {count([d > 0 for d in diffs])}"
        if noise is not None:
            text += (f" (by more than ±{noise[1]:.3f}, one standard error of an average accuracy, in "
                     f"{sum(d > noise[1] for d in diffs)})")
        return text

    def brief(diffs: list[float]) -> str:
        """count_acc's numbers in parentheses, for a sentence that lists several claims."""
        if not diffs:
            return ""
        beyond = f", {sum(d > noise[1] for d in diffs)} beyond ±{noise[1]:.3f}" if noise is not None else ""
        return f" (by average accuracy in {count([d > 0 for d in diffs])}{beyond})"

    lines += [
        "The papers' claims, counted over the (model, granularity, n_prune) cells above, on the reference "
        "calibration's plans (perplexity: geometric mean over the evaluation corpora):", ""]
    if counted.authors:  # each method as its authors ran it; the variants after
        lines += [
            "- *EntroDrop beats ShortGPT's BI*, EntroDrop as its authors ran it (the method's default reading, "
            f"lower perplexity): holds in {count(claims['entro_ref'])} cells" + count_acc(claims_acc["entro_ref"])
            + ".",
            "- *MI-PRUN beats ShortGPT*, MI-PRUN as its authors ran it (best of greedy / FBS / brute force with "
            f"its default estimator): holds in {count(claims['mi_ref'])} cells" + count_acc(claims_acc["mi_ref"])
            + ".",
            f"- *MI-PRUN beats EntroDrop*, both as their authors ran them: holds in "
            f"{count(claims['mi_vs_entro_ref'])} cells.",
            "- The same claims for the best of every reading of a method, the labelled variants included (a "
            f"best-of-several, so it favours the method with more readings): EntroDrop beats ShortGPT in "
            f"{count(claims['entro'])} cells{brief(claims_acc['entro'])}, MI-PRUN beats ShortGPT in "
            f"{count(claims['mi'])} cells{brief(claims_acc['mi'])}, MI-PRUN beats EntroDrop in "
            f"{count(claims['mi_vs_entro'])} cells.",
        ]
    else:
        lines += [
            f"- *EntroDrop beats ShortGPT's BI* (best of its entropy estimators, lower perplexity): "
            f"holds in {count(claims['entro'])} cells"
            + count_acc(claims_acc["entro"]) + ".",
            f"- *MI-PRUN beats ShortGPT* (best of greedy / FBS / brute force): holds in {count(claims['mi'])} cells"
            + count_acc(claims_acc["mi"]) + ".",
            f"- *MI-PRUN beats EntroDrop*: holds in {count(claims['mi_vs_entro'])} cells.",
        ]
    if noise is not None:
        lines += _accuracy_wins(study, wins, noise[1])
    lines += all_calibration_claims(cells, None if noise is None else noise[1], counted.authors)
    lines += floor_lines(study)
    lines += correlation_lines(study)
    stab = []
    for m in study.models:
        for mid in study.methods(m, "layer"):
            if mid in ("sequential", "reverse"):
                continue
            vals = [v for n in study.cells(m, "layer") if (v := study.stability_split(m, "layer", mid, n)["all"])
                    is not None]
            if vals:
                stab.append((m, mid, sum(vals) / len(vals)))
    if stab:
        lo, hi = min(stab, key=lambda t: t[2]), max(stab, key=lambda t: t[2])
        lines.append(f"- *Plans are stable across calibration data*: layer-plan Jaccard averages range from "
                     f"{fmt(lo[2])} ({study.name(lo[1])}, {lo[0]}) to {fmt(hi[2])} ({study.name(hi[1])}, {hi[0]}).")
    lines.append("")
    return lines


def reference_reading(mid: str) -> bool:
    """A row of the method as its authors ran it: its registered default estimator with no parameters (a study
    spec refuses that estimator under another EntroDrop stage rule, so the id alone tells the reading)."""
    method = mid.partition("/")[0]
    if method not in METHODS or "[" in mid:
        return False
    default = METHODS.get(method).default_estimator
    return mid in (method, f"{method}/{default}") if default else mid == method


def _best(rows: list[Row], key: str) -> Row | None:
    vals = [r for r in rows if getattr(r, key) is not None and r.method not in ("sequential", "reverse")]
    if not vals:
        return None
    return min(vals, key=lambda r: r.ppl_ratio) if key == "ppl_ratio" else max(vals, key=lambda r: r.avg_acc)


def _over_calibrations(r: Row) -> tuple[float, float] | None:
    """A method's geometric-mean ppl× and mean average accuracy over every calibration's plan, when all of
    them are measured (a partial mean would compare different calibrations)."""
    if r.n_calibrations < 2 or len(r.ppl_ratio_all) < r.n_calibrations or len(r.acc_all) < r.n_calibrations:
        return None
    return geomean(r.ppl_ratio_all), sum(r.acc_all) / len(r.acc_all)


def all_calibration_claims(cells: Sequence[Sequence[Row]], noise: float | None, authors: bool) -> list[str]:
    """The papers' claims counted again over ``cells`` (each cell's rows, as ``Study.rows`` gives them) with
    each method judged by all its calibrations' plans, not by the reference calibration's alone. Why: one
    calibration is one draw; a plan that wins only on it is luck of the corpus and seed, and the stability
    tables show such plans differ from draw to draw. ``authors`` (:attr:`ClaimCounts.authors`): judge each
    method as its authors ran it, as the summary's first claims do, else by every reading."""
    ppl: dict[str, list[bool]] = {"entro": [], "mi": [], "mi_vs_entro": []}
    acc: dict[str, list[float]] = {"entro": [], "mi": []}
    k = 0
    for rows in cells:
        rows = [r for r in rows if not authors or family(r.method) == "base" or reference_reading(r.method)]
        sg = next((r for r in rows if r.method == "shortgpt"), None)
        base = _over_calibrations(sg) if sg else None
        if sg is None or base is None:
            continue
        k = max(k, sg.n_calibrations)
        fams = {fam: [v for r in rows if family(r.method) == f and (v := _over_calibrations(r))]
                for fam, f in (("entro", "entrodrop"), ("mi", "mi"))}
        for fam, vals in fams.items():
            if vals:
                ppl[fam].append(min(v[0] for v in vals) < base[0])
                acc[fam].append(max(v[1] for v in vals) - base[1])
        if fams["entro"] and fams["mi"]:
            ppl["mi_vs_entro"].append(min(v[0] for v in fams["mi"]) < min(v[0] for v in fams["entro"]))
    if not ppl["entro"] and not ppl["mi"]:
        return []

    def said(fam: str) -> str:
        text = f"in {sum(ppl[fam])} of {len(ppl[fam])} cells by perplexity and {sum(d > 0 for d in acc[fam])} by " \
               "average accuracy"
        return text + (f" ({sum(d > noise for d in acc[fam])} beyond ±{noise:.3f})" if noise is not None else "")

    parts = [f"EntroDrop beats ShortGPT {said('entro')}"] if ppl["entro"] else []
    parts += [f"MI-PRUN beats ShortGPT {said('mi')}"] if ppl["mi"] else []
    parts += [f"MI-PRUN beats EntroDrop in {sum(ppl['mi_vs_entro'])} of {len(ppl['mi_vs_entro'])} cells by "
              "perplexity"] if ppl["mi_vs_entro"] else []
    who = "each method as its authors ran it: " if authors else ""
    return [f"- *The same claims over all {k} calibrations* ({who}each method's geometric-mean ppl× and mean average "
            f"accuracy over its plans from every calibration, cells where all are measured): {'; '.join(parts)}."]


def _accuracy_wins(study: Study, wins: list[tuple[str, str, int, Row, Row]], noise: float) -> list[str]:
    """The accuracy wins over ShortGPT beyond the noise, each with the task that moved most and both
    perplexities: a win carried by one task, at a worse perplexity, is not the papers' claim holding."""
    out, held = [], 0
    for m, gran, n, top, sg in wins:
        if top.avg_acc is None or sg.avg_acc is None or top.avg_acc - sg.avg_acc <= noise:
            continue
        moved = {t: a - sg.accuracy[t] for t, a in top.accuracy.items() if t in sg.accuracy}
        task = max(moved, key=lambda t: abs(moved[t])) if moved else None
        text = f"  - {m}, {n} {gran}s: {study.name(top.method)} {fmt(top.avg_acc, 3)} vs ShortGPT {fmt(sg.avg_acc, 3)}"
        if task is not None and len(moved) > 1:
            rest = [t for t in moved if t != task]
            a, b = (sum(r.accuracy[t] for t in rest) / len(rest) for r in (top, sg))
            text += f"; largest task change {task} {moved[task]:+.2f}, without it {fmt(a, 3)} vs {fmt(b, 3)}"
            held += a - b > noise
        out.append(text + f"; ppl× {fmt(top.ppl_ratio)} vs {fmt(sg.ppl_ratio)}")
    if not out:
        return []
    return [f"- Accuracy wins over ShortGPT beyond the noise: {len(out)}; {held} of them still ahead by more than "
            f"±{noise:.3f} with the task that moved most left out. Each with the perplexity its plan paid:", *out]


def floor_lines(study: Study) -> list[str]:
    """Dense accuracy against what needs no model, and how many pruned plans fall to that floor: the
    accuracy differences between methods live in the gap between the two."""
    _, chance = study.baseline_accuracy("chance")
    _, constant = study.baseline_accuracy("constant")
    if chance is None or constant is None:
        return []
    noise = study.accuracy_noise()
    out = [f"- *What the accuracies are worth*: on the scored documents a random guess averages {fmt(chance, 3)} "
           f"and always giving the best answer position (in hindsight, per task) {fmt(constant, 3)}."]
    for m in study.models:
        dense = study.avg_accuracy(study.dense(m))
        if dense is None:
            continue
        accs = [a for k, ev in study.evaluations.items() if k.startswith(f"{m}|") and k != plan_key(m, "", None)
                and (a := study.avg_accuracy(ev)) is not None]
        text = f"  - {m}: dense {fmt(dense, 3)}, {dense - chance:+.3f} above chance"
        margin = margin_over_constant(study, m)
        if margin is not None:
            se_d, se_c, z = margin
            text += (f"; against the best constant answer: dense {fmt(dense, 3)} ± {se_d:.3f} vs {fmt(constant, 3)} ± "
                     f"{se_c:.3f} (binomial standard errors of the average over the scored questions), "
                     f"{dense - constant:+.3f} = {z:.1f} combined standard errors")
        if accs:
            text += (f"; of its {len(accs)} pruned plans with lm-eval results, {sum(a <= constant for a in accs)} "
                     "score no more than the best constant answer")
            if noise is not None:
                near = sum(a <= chance + noise[1] for a in accs)
                text += f" and {near} {'is' if near == 1 else 'are'} within ±{noise[1]:.3f} of chance"
        out.append(text + ".")
    return out


def margin_over_constant(study: Study, model: str) -> tuple[float, float, float] | None:
    """(standard error of the dense average accuracy, of the best constant answer's, margin ÷ their combined
    error): whether the dense model answers better than a guess in hindsight, with the noise of the limited
    question counts, is the question the accuracies stand on. Each task's error is √(p(1 − p)/n)."""
    ev = study.dense(model)
    per_task, constant = study.baseline_accuracy("constant")
    dense = study.avg_accuracy(ev)
    if ev is None or dense is None or constant is None or not study.tasks:
        return None
    ns = [ev.metrics.get(f"{t}.n") for t in study.tasks]
    accs = [task_accuracy(ev.metrics, t) for t in study.tasks]
    if any(n is None or n <= 0 for n in ns) or any(t not in per_task for t in study.tasks):
        return None
    k = len(study.tasks)
    se_d = math.sqrt(sum(a * (1 - a) / n for a, n in zip(accs, ns, strict=True))) / k  # type: ignore[operator]
    se_c = math.sqrt(sum(per_task[t] * (1 - per_task[t]) / n for t, n in zip(study.tasks, ns, strict=True))) / k  # type: ignore[operator]
    both = math.hypot(se_d, se_c)
    return se_d, se_c, (dense - constant) / both if both > 0 else math.inf


def correlation_lines(study: Study) -> list[str]:
    """One summary bullet: how well perplexity ranks plans, and which tasks do not react at all."""
    parts, flat = [], []
    for m in study.models:
        plans = study.measured_plans(m)
        n = len(plans)
        if n < 3:
            continue
        rho = study.ppl_accuracy_correlation(m, plans)
        parts.append(f"{fmt(rho['avg'])} ({m}, {n} plans)")
        quiet = [t for t in study.tasks if rho[t] is None or abs(rho[t]) < 2 / math.sqrt(n - 1)]  # type: ignore[arg-type]
        if quiet:
            flat.append(f"{', '.join(quiet)} ({m})")
    if not parts:
        return []
    text = f"- *Does perplexity rank plans as average accuracy does?* Spearman ρ = {'; '.join(parts)}"
    if flat:
        text += "; tasks whose accuracy does not follow perplexity (|ρ| under two null standard errors): " + \
            "; ".join(flat)
    return [text + "."]
