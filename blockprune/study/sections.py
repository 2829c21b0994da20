"""The report's tables, one function per section: the headline, which plan to pick per perplexity budget,
perplexity against accuracy, each model's results (with its figures), plan stability, selections a method
could not make, and cost. Each reads a :class:`Study` and returns Markdown lines; the sections that show
figures also write them to the report's figure folder.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from blockprune.study.figures import FLOORS, curve_figure, dropped_figure, save_figure, tradeoff_figure
from blockprune.study.markdown import block_list, fmt, short, table
from blockprune.study.record import LM_EVAL_CPU, RECHECK, method_id, plan_key
from blockprune.study.spec import StudySpec
from blockprune.study.tables import VARIANTS, Row, Study, _estimator_label, display, geomean


def headline(study: Study, granularity: str = "layer") -> list[str]:
    """Methods × (model, n_prune): ppl× of the reference plan, the best (lowest) in each column in bold."""
    cols = [(m, n) for m in study.models for n in study.cells(m, granularity)]
    if not cols:
        return []
    grid = {(m, n): {r.method: r for r in study.rows(m, granularity, n)} for m, n in cols}
    methods = list(dict.fromkeys(mid for m in study.models for mid in study.methods(m, granularity)))
    best = {c: min((r.ppl_ratio for r in grid[c].values() if r.ppl_ratio is not None), default=None) for c in cols}
    rows = []
    for mid in methods:
        cells = [study.name(mid)]
        for c in cols:
            r = grid[c].get(mid)
            v = None if r is None else r.ppl_ratio
            cells.append("–" if v is None else (f"**{fmt(v)}**" if v == best[c] else fmt(v)))
        rows.append(cells)
    hdr = ["ppl× (reference plan)"] + [f"{m} −{n}" for m, n in cols]
    return [f"**Headline ({granularity} pruning).** Perplexity ÷ dense (geometric mean over the evaluation "
            "corpora) of each method's reference-calibration plan; lowest per column in bold.", ""] + \
        table(hdr, rows) + [""]


BUDGETS = (1.1, 1.25, 1.5, 2.0, 4.0)  # perplexity ÷ dense a user might accept
NO_PLAN = "no plan of the grid"


def budget_section(study: Study) -> list[str]:
    """For each perplexity budget, the reference plan that leaves the fewest parameters: the table to
    start from when choosing a plan."""
    models = [m for m in study.models if study.dense(m) is not None]
    rows = []
    for b in BUDGETS:
        cells = [f"≤ {b:g}×"]
        for m in models:
            pick = study.smallest_within(m, b)
            if pick is None:
                cells.append(NO_PLAN)
                continue
            r, gran, kept = pick
            acc = "" if r.avg_acc is None else f", avg acc {fmt(r.avg_acc, 3)}"
            cells.append(f"{len(r.blocks)} {gran}s by {study.name(r.method)}: ppl× {fmt(r.ppl_ratio)}, "
                         f"{100 * kept:.1f}% of the parameters{acc} (`{short(r.evaluation_run)}`)")
        rows.append(cells)
    if not models or all(c == NO_PLAN for row in rows for c in row[1:]):
        return []
    return ["## Which plan to pick", "",
            "For a perplexity budget (ppl× at most the given factor), the reference-calibration plan of any "
            "method and granularity that leaves the fewest parameters (embeddings included, so attention-only "
            "plans save less than their block count suggests). Only the grid's block counts are tried.", ""] + \
        table(["ppl× budget"] + models, rows) + [""]


def correlation_section(study: Study, fig_dir: Path, rel_dir: str) -> list[str]:
    """Spearman's ρ between ppl× and each task's accuracy over every measured plan, and the scatter."""
    plans = {m: study.measured_plans(m) for m in study.models}
    models = [m for m in study.models if len(plans[m]) >= 3]
    if not models:
        return []
    save_figure(tradeoff_figure(study, plans), fig_dir / "ppl-vs-accuracy.png")
    n = {m: len(plans[m]) for m in models}
    rho = {m: study.ppl_accuracy_correlation(m, plans[m]) for m in models}
    lines = ["## Does perplexity predict accuracy?", "",
             "Spearman's ρ between ppl× and accuracy over every plan (all calibrations) with both measured: "
             "−1 means the lower the perplexity, the higher the accuracy, in the same order. With n plans and no "
             "relation, ρ scatters around 0 with a standard error of 1/√(n−1) (given per column): a task within two "
             "of those of 0 does not follow the pruning at this model size.", "",
             f"![accuracy against perplexity]({rel_dir}/ppl-vs-accuracy.png)", ""]
    hdr = ["accuracy"] + [f"ρ {m} ({n[m]} plans, ±{1 / math.sqrt(n[m] - 1):.2f})" for m in models]
    rows = [[t] + [fmt(rho[m][t]) for m in models] for t in study.tasks]
    rows.append(["**average**"] + [f"**{fmt(rho[m]['avg'])}**" for m in models])
    return lines + table(hdr, rows) + [""]


def model_section(study: Study, spec: StudySpec, model: str, n_blocks: int, fig_dir: Path, rel_dir: str) -> list[str]:
    lines = [f"## {model} ({n_blocks} layers)", ""]
    dense = study.dense(model)
    with_tasks = bool(study.tasks)
    if dense is not None:
        hdr = ["model"] + [f"ppl {c}" for c in study.corpora] + [t for t in study.tasks]
        hdr += ["avg acc"] if with_tasks else []
        hdr += ["params", "run"]
        cells = ["dense"] + [fmt(dense.ppl(c)) for c in study.corpora]
        cells += [fmt(v, 3) if (v := dense.metrics.get(f"{t}.acc_norm", dense.metrics.get(f"{t}.acc"))) is not None
                  else "–" for t in study.tasks]
        cells += [fmt(study.avg_accuracy(dense), 3)] if with_tasks else []
        cells += [f"{dense.metrics.get('params_total', 0) / 1e6:.1f} M", f"`{short(dense.run_id)}`"]
        rows = [cells]
        if with_tasks and study.baseline is not None:
            for what, label, _ in FLOORS:
                per, avg = study.baseline_accuracy(what)
                rows.append([label] + ["–" for _ in study.corpora] + [fmt(per.get(t), 3) for t in study.tasks]
                            + [fmt(avg, 3), "–", f"`{short(study.baseline.run_id)}`"])
        lines += table(hdr, rows) + [""]
    for gran in ("layer", "attention"):
        cells_n = study.cells(model, gran)
        if not cells_n:
            continue
        lines += [f"### {gran.capitalize()} pruning", ""]
        for what in ("ppl", "acc"):
            if what == "acc" and not any(r.avg_acc is not None for n in cells_n for r in study.rows(model, gran, n)):
                continue
            name = f"{model}-{gran}-{what}.png"
            save_figure(curve_figure(study, model, gran, what), fig_dir / name)
            lines += [f"![{model} {gran} {what}]({rel_dir}/{name})", ""]
        name = f"{model}-{gran}-dropped-n{cells_n[-1]}.png"
        save_figure(dropped_figure(study, model, gran, cells_n[-1], n_blocks), fig_dir / name)
        lines += [f"![{model} dropped blocks]({rel_dir}/{name})", ""]
        for n in cells_n:
            rows = study.rows(model, gran, n)
            if not rows:
                continue
            hdr = ["method", "dropped (ref.)"] + [f"ppl {c}" for c in study.corpora] + ["ppl×", "ppl× all cal."]
            hdr += ["avg acc", "rel. %", "avg acc all cal."] if with_tasks else []
            hdr += ["stability J", "run"]
            lines += [f"**{n} {gran} block{'s' if n > 1 else ''} pruned** "
                      f"({100 * n / n_blocks:.0f}% of the {gran}s)", ""]
            lines += table(hdr, [_row_cells(study, r, with_tasks) for r in rows]) + [""]
    return lines


def _spread(values: list[float], n_plans: int, centre: Callable[[list[float]], float], digits: int = 2) -> str:
    """``centre (min–max)`` over the calibrations' plans; says how many are in it while some are unmeasured."""
    if len(values) < 2:
        return "–"
    text = f"{fmt(centre(values), digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"
    return text if len(values) >= n_plans else f"{text}, {len(values)} of {n_plans}"


def _row_cells(study: Study, r: Row, with_tasks: bool) -> list[str]:
    cells = [study.name(r.method), block_list(r.blocks)] + [fmt(r.ppl.get(c)) for c in study.corpora]
    cells += [fmt(r.ppl_ratio), _spread(r.ppl_ratio_all, r.n_calibrations, geomean)]
    if with_tasks:
        cells += [fmt(r.avg_acc, 3), fmt(r.rel, 1),
                  _spread(r.acc_all, r.n_calibrations, lambda v: sum(v) / len(v), 3)]
    cells += [fmt(r.stability), f"`{short(r.evaluation_run)}`"]
    return cells


def stability_section(study: Study, model: str) -> list[str]:
    lines = [f"### Plan stability: {model}", ""]
    for gran in ("layer", "attention"):
        cells_n = study.cells(model, gran)
        methods = [m for m in study.methods(model, gran) if m not in ("sequential", "reverse")]
        if not cells_n or not methods:
            continue
        hdr = ["method"] + [f"n={n}: all / seeds / corpora" for n in cells_n]
        rows = []
        for mid in methods:
            row = [study.name(mid)]
            for n in cells_n:
                s = study.stability_split(model, gran, mid, n)
                row.append(" / ".join(fmt(s[k]) for k in ("all", "seeds", "corpora")))
            rows.append(row)
        lines += [f"{gran.capitalize()} plans, mean pairwise Jaccard of the dropped blocks "
                  f"({len(study.plans(model, gran, methods[0], cells_n[0]))} calibrations):", ""]
        lines += table(hdr, rows) + [""]
    return lines


def infeasible_section(study: Study) -> list[str]:
    if not study.infeasible:
        return []
    lines = ["## Selections a method could not make", "",
             "Recorded, not failed: the method's own rule leaves fewer droppable blocks than asked for.", ""]
    rows = [[r.tags.get("model", ""), f"{r.tags.get('corpus')} seed {r.tags.get('seed')}",
             study.name(r.tags.get("label") or method_id(r.tags.get("method", ""), r.tags.get("estimator"))),
             r.tags.get("granularity", ""),
             r.tags.get("n_prune", ""), r.tags.get("infeasible", "(reason not in this export)"), f"`{short(r.run_id)}`"] for r in study.infeasible]
    return lines + table(["model", "calibration", "method", "granularity", "n_prune", "why", "run"], rows) + [""]


def cost_section(study: Study, spec: StudySpec) -> list[str]:
    lines = ["## Cost", "", "Capture (forward passes with hooks, store written) and scoring+selection seconds per "
             "calibration; scoring times include filling the store's score cache, so the first method that needs "
             "an estimator pays for the ones after it.", ""]
    hdr = ["model", "calibration", "capture s", "tokens", "scoring s (all trials)", "run"]
    rows = []
    for c in sorted(study.calibrations, key=lambda r: (r.tags.get("model", ""), r.tags.get("seed", ""),
                                                         r.tags.get("corpus", ""))):
        m, corpus, seed = c.tags.get("model"), c.tags.get("corpus"), c.tags.get("seed")
        secs = sum(s.scoring_seconds for s in study.selections
                   if s.model == m and s.corpus == corpus and str(s.seed) == seed)
        rows.append([m or "", f"{corpus} seed {seed}", fmt(c.metrics.get("capture_seconds"), 1),
                     f"{c.metrics.get('tokens_calibrated', 0):,.0f}", fmt(secs, 1), f"`{short(c.run_id)}`"])
    lines += table(hdr, rows) + [""]
    lines += estimator_cost_lines(study)
    lines += ["Exact MI scores computed per selection (mean over calibrations): Fast-Block-Select against brute "
              "force, the number MI-PRUN's Fast-Block-Select exists to cut.", ""]
    ests = study.mi_estimators() or ["mi.ksg"]
    multi = len(ests) > 1  # one estimator (the small models' study): no estimator column
    hdr = ["model", "n_prune"] + (["estimator"] if multi else []) + ["greedy", "FBS", "brute force", "FBS = brute?"]
    rows = []
    for m in study.models:
        for n in study.cells(m, "layer"):
            for est in ests:
                ex = study.exact_scores(m, n, est)
                if not ex:
                    continue
                mids = [f"{method}/{est}" for method in ("mi_greedy", "mi_fbs", "mi_brute")]
                fbs = study.plans(m, "layer", mids[1], n)
                brute = {(s.corpus, s.seed): s.blocks for s in study.plans(m, "layer", mids[2], n)}
                both = [s for s in fbs if (s.corpus, s.seed) in brute]  # calibrations that ran both
                same = sum(1 for s in both if brute[(s.corpus, s.seed)] == s.blocks)
                rows.append([m, str(n)] + ([_estimator_label(est)] if multi else [])
                            + [fmt(ex.get(k), 1) for k in mids] + [f"{same}/{len(both)}" if both else "–"])
    lines += table(hdr, rows) + [""]
    lines += time_lines(study, spec)
    return lines


def _estimator_of(mid: str) -> str:
    """The score a row's selections read: its estimator with any parameters (a raw-scale KSG fills a cache of its
    own), or the method itself for statistics gathered while capturing (BI, angular distance, ...)."""
    base, _, params = mid.partition("[")
    method, _, est = base.partition("/")
    return (est or method) + (f"[{params}" if params else "")


def estimator_cost_lines(study: Study) -> list[str]:
    """Scoring seconds per estimator and calibration: what each score costs on its own, since the selections of
    one estimator share its cache (the first pays for the scores, the others mostly read them)."""
    per: dict[tuple[str, str], dict[tuple[str, int], list[float]]] = {}
    for sel in study.selections:
        cell = per.setdefault((sel.model, _estimator_of(sel.method)), {})
        cell.setdefault((sel.corpus, sel.seed), []).append(sel.scoring_seconds)
    if not per:
        return []
    rows = []
    for (m, est), by_cal in per.items():
        totals = [sum(v) for v in by_cal.values()]
        base, _, params = est.partition("[")
        name = (_estimator_label(base) if "." in base else display(base)) + (
            f" · {VARIANTS.get(params.removesuffix(']'), params)}" if params else "")
        rows.append((m, -sum(totals) / len(totals), [
            m, name, f"{sum(len(v) for v in by_cal.values()) / len(by_cal):.0f}", fmt(sum(totals) / len(totals), 1),
            fmt(max(totals), 1), str(len(by_cal))]))
    rows.sort(key=lambda r: (r[0], r[1]))  # per model, the most expensive first
    return ["Scoring and selection seconds per estimator and calibration (all selections that read it; the "
            "first fills the store's score cache, the rest mostly read it), mean and maximum over calibrations:",
            "", *table(["model", "estimator", "selections per calibration", "s per calibration", "max s",
                        "calibrations"], [r[2] for r in rows]), ""]


def _mean(vals: list[float]) -> float | None:
    return sum(vals) / len(vals) if vals else None


def time_lines(study: Study, spec: StudySpec) -> list[str]:
    """Measured seconds per unit of work, per model, and what the rest of the grid would take at that rate."""
    lines = ["Wall time per unit of work on the machine that ran this study (means of the runs above), and the "
             "time the unfinished part of the grid needs at those rates:", ""]
    hdr = ["model", "capture s / calibration", "scoring s / calibration", "perplexity s / plan",
           "lm-eval s / plan", "left: calibrations / plans (ppl) / plans (lm-eval)", "≈ hours left",
           "≈ hours, whole grid"]
    rows = []
    whole_total = 0.0
    n_cal = len(spec.calibrations())
    for m in study.models:
        cals = [c for c in study.calibrations if c.tags.get("model") == m]
        cap = _mean([c.metrics["capture_seconds"] for c in cals if c.metrics.get("capture_seconds")])
        per_cal: dict[tuple[str, int], float] = {}
        for s in study.selections:
            if s.model == m:
                per_cal[(s.corpus, s.seed)] = per_cal.get((s.corpus, s.seed), 0.0) + s.scoring_seconds
        score = _mean(list(per_cal.values()))
        keys = {s.plan_key for s in study.selections if s.model == m} | {plan_key(m, "", None)}
        evs = [study.evaluations[k] for k in keys if k in study.evaluations]
        ppl_s = _mean([e.metrics["ppl_seconds"] for e in evs if "ppl_seconds" in e.metrics])
        lm_s = _mean([e.metrics["lm_eval_seconds"] for e in evs if "lm_eval_seconds" in e.metrics])
        cal_left = n_cal - len(per_cal)
        ppl_left = len(keys) - len(evs)
        lm_left = len(keys) - sum(1 for e in evs if "lm_eval_seconds" in e.metrics) if study.tasks else 0
        ref = {s.plan_key for s in study.selections if s.model == m and s.reference} | {plan_key(m, "", None)}
        if spec.evaluation.lm_eval_scope == "reference":
            lm_left = sum(1 for k in ref if not (k in study.evaluations
                                                  and "lm_eval_seconds" in study.evaluations[k].metrics))
        # plans of the calibrations not yet run: as many new distinct plans per calibration as so far
        new_per_cal = (len(keys) - 1) / max(len(per_cal), 1)
        est = whole = None
        if cap is not None and score is not None and ppl_s is not None:
            more = cal_left * new_per_cal if spec.evaluation.lm_eval_scope == "all" else 0
            est = (cal_left * (cap + score) + (ppl_left + cal_left * new_per_cal) * ppl_s
                   + (lm_left + more) * (lm_s or 0.0)) / 3600
            # the same rates over the whole grid: what a fresh machine needs for this model
            n_plans = len(keys) + cal_left * new_per_cal
            n_lm = 0 if not study.tasks else n_plans if spec.evaluation.lm_eval_scope == "all" else len(ref)
            whole = (n_cal * (cap + score) + n_plans * ppl_s + n_lm * (lm_s or 0.0)) / 3600
            whole_total += whole
        hours = fmt(est, 1) + (" + lm-eval (no rate measured yet)" if est is not None and lm_s is None and lm_left
                               else "")
        rows.append([m, fmt(cap, 0), fmt(score, 0), fmt(ppl_s, 1), fmt(lm_s, 0),
                     f"{cal_left} / {ppl_left} / {lm_left}", hours, fmt(whole, 1)])
    tail = [f"At these rates the whole grid takes ≈ {fmt(whole_total, 1)} h of study time on this machine, "
            "plus model loading between plans and the once-per-machine set-up (corpora, lm-eval data).", ""] \
        if whole_total else []
    return lines + table(hdr, rows) + [""] + tail + _replay_note(study) + cpu_lines(study)


def cpu_lines(study: Study) -> list[str]:
    """Which CPUs measured the lm-eval accuracies, and what rechecks of the dense model found: bfloat16
    accuracies move by a few answers between CPUs with and without native bfloat16, so a reader has to be
    able to see whether one report mixes them."""
    done = [e for e in study.evaluations.values() if "lm_eval_seconds" in e.metrics]
    if not done:
        return []
    counts: dict[str, int] = {}
    for e in done:
        cpu = e.where.get(LM_EVAL_CPU, "")
        counts[cpu] = counts.get(cpu, 0) + 1
    parts = [f"{cpu or 'not recorded (evaluated before the CPU was logged)'}: {n} plan{'s' * (n != 1)}"
             for cpu, n in sorted(counts.items(), key=lambda kv: (kv[0] == "", -kv[1], kv[0]))]
    out = ["lm-eval ran on: " + "; ".join(parts) + "."]
    for k, e in sorted(study.evaluations.items()):
        for tag, text in sorted(e.where.items()):
            if tag.startswith(f"{RECHECK}."):
                out.append(f"Dense recheck of {tag.removeprefix(f'{RECHECK}.')} for `{k}` "
                           f"(run `{short(e.run_id)}`): {text}.")
    return [" ".join(out), ""]


def _replay_note(study: Study) -> list[str]:
    """Says when per-plan times are with the dense prefix replayed (they are then not a full pass's)."""
    out = []
    for what, metric in (("perplexity", "ppl_replayed_layers"), ("lm-eval", "lm_eval_replayed_layers")):
        n = [e.metrics[metric] for e in study.evaluations.values() if metric in e.metrics]
        if n:
            out.append(f"{len(n)} plans' {what} started from the dense model's recorded hidden states "
                       f"(`replay_dense_prefix`), skipping on average {fmt(sum(n) / len(n), 1)} unchanged layers; "
                       "their times above are those shorter passes, the dense model's includes the recording.")
    return [" ".join(out), ""] if out else []
