"""docs/RESULTS.md from the study's MLflow runs: tables, figures, stability, cost and a generated summary.

Nothing in the report is typed by hand: every number is read from a run, every table row names the run
it came from (short id; ``runs.json`` beside the report holds the full runs), and the summary sentences
are computed from the same rows.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blockprune.study.record import StudyLog, export, method_id, plan_key
from blockprune.study.spec import StudySpec
from blockprune.study.tables import Row, Study, display, geomean


def fmt(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def short(run_id: str | None) -> str:
    return run_id[:8] if run_id else "–"


def _blocks(b: Sequence[int]) -> str:
    return " ".join(str(i) for i in b)


def load_study(spec: StudySpec, tracking_uri: str) -> tuple[Study, list[Any]]:
    slog = StudyLog(tracking_uri, spec.experiment, spec.name, spec.fingerprint)
    runs = slog.runs()
    study = Study.from_runs(runs, [t for t, _ in spec.evaluation.tasks], list(spec.evaluation.corpora),
                            [m.name for m in spec.models], spec.evaluation.tasks_tag,
                            spec.evaluation.docs_tag)
    return study, runs


# ----------------------------------------------------------------------------------------------- figures


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


MARKERS = "osD^vPX"  # shrinking markers of distinct shapes: methods that chose the same plans stay visible
FAMILIES = (("base", "ShortGPT and baselines"), ("entrodrop", "EntroDrop"), ("mi", "MI-PRUN"))


def family(method: str) -> str:
    """Which paper a report row belongs to: one figure panel each, so 14 methods stay readable."""
    return "entrodrop" if method.startswith("entrodrop") else "mi" if method.startswith("mi_") else "base"


def curve_figure(study: Study, model: str, granularity: str, what: str) -> Any:
    """ppl× (log scale, min–max over calibrations as a band) or average accuracy vs blocks pruned; one
    panel per method family on a shared y axis, ShortGPT (black) repeated in each as the yardstick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = study.cells(model, granularity)
    by_n = {n: {r.method: r for r in study.rows(model, granularity, n)} for n in cells}  # once, not per method
    methods = study.methods(model, granularity)
    panels = [(f, title, [m for m in methods if family(m) == f]) for f, title in FAMILIES]
    panels = [p for p in panels if p[2]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels) + 0.6, 4.4), sharey=True, squeeze=False)
    dense = study.avg_accuracy(study.dense(model)) if what == "acc" else None
    for ax, (fam, title, members) in zip(axes[0], panels, strict=True):
        shown = members if fam == "base" or "shortgpt" not in methods else ["shortgpt", *members]
        for i, mid in enumerate(shown):
            color = "k" if mid == "shortgpt" else plt.get_cmap("tab10")(i % 10)
            _curve(ax, by_n, cells, mid, what, color, MARKERS[i % len(MARKERS)], 7.0 - 0.6 * (i % len(MARKERS)),
                   yardstick=mid == "shortgpt" and fam != "base")
        if dense is not None:
            ax.axhline(dense, color="k", lw=0.8, ls=":", label="dense")
            _floor_lines(ax, study)
        ax.set_xlabel(f"{granularity} blocks pruned")
        ax.set_xticks(cells)
        ax.grid(alpha=0.3)
        ax.set_title("ShortGPT" if members == ["shortgpt"] else title, fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    if what == "ppl":
        axes[0][0].set_yscale("log")
        axes[0][0].set_ylabel("perplexity ÷ dense (geo-mean over corpora)")
    else:
        axes[0][0].set_ylabel("average accuracy")
    fig.suptitle(f"{model}: {granularity} pruning (band: min–max over calibrations)", fontsize=10)
    return fig


FLOORS = (("chance", "chance (random guess)", "-."), ("constant", "best constant answer", (0, (1, 3))))


def _floor_lines(ax: Any, study: Study) -> None:
    """The answer baselines' average accuracy as grey lines (nothing before the baseline run exists)."""
    for what, label, ls in FLOORS:
        floor = study.baseline_accuracy(what)[1]
        if floor is not None:
            ax.axhline(floor, color="0.45", lw=0.9, ls=ls, label=label)


def _curve(ax: Any, by_n: dict[int, dict[str, Row]], cells: Sequence[int], mid: str, what: str, color: Any,
           marker: str, size: float, yardstick: bool) -> None:
    xs, ys, lo, hi = [], [], [], []
    for n in cells:
        row = by_n[n].get(mid)
        y = None if row is None else row.ppl_ratio if what == "ppl" else row.avg_acc
        if row is None or y is None:
            continue
        xs.append(n)
        ys.append(y)
        span = (row.ppl_ratio_all if what == "ppl" else row.acc_all) or [y]
        lo.append(min(span))
        hi.append(max(span))
    if not xs:
        return
    ax.plot(xs, ys, "--" if yardstick else "-", marker=marker, ms=size, lw=1.1 if yardstick else 1.4, color=color,
            alpha=0.7 if yardstick else 1.0, label=display(mid))
    if not yardstick and any(h > low for h, low in zip(hi, lo, strict=True)):
        ax.fill_between(xs, lo, hi, color=color, alpha=0.12, lw=0)


def tradeoff_figure(study: Study, measured: dict[str, list[Any]] | None = None) -> Any:
    """Average accuracy against ppl× (log) for every measured plan, one panel per model, with the dense model
    and the answer baselines as lines: where the cheap number and the expensive one agree, and where the
    accuracies sit on the floor. ``measured``: each model's ``measured_plans`` when the caller has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = measured if measured is not None else {m: study.measured_plans(m) for m in study.models}
    models = [m for m in study.models if measured[m]]
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 4.2), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        plans = measured[m]
        for gran, color in (("layer", "tab:blue"), ("attention", "tab:orange")):
            pts = [(r, study.avg_accuracy(ev)) for ev, r in plans if ev.plan_key.split("|")[1] == gran]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=16, alpha=0.7, color=color,
                           label=f"{gran} plans ({len(pts)})")
        dense = study.avg_accuracy(study.dense(m))
        if dense is not None:
            ax.axhline(dense, color="k", lw=0.8, ls=":", label="dense")
        _floor_lines(ax, study)
        rho = study.ppl_accuracy_correlation(m, plans)["avg"]
        ax.set_xscale("log")
        ax.set_xlabel("perplexity ÷ dense (geo-mean over corpora)")
        ax.set_title(f"{m}: Spearman ρ = {fmt(rho)}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[0][0].set_ylabel("average accuracy")
    fig.suptitle("Accuracy against perplexity, every plan of every calibration", fontsize=10)
    return fig


def dropped_figure(study: Study, model: str, granularity: str, n_prune: int, n_blocks: int) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from blockprune.tracking.figures import dropped_grid_figure

    rows = study.rows(model, granularity, n_prune)
    return dropped_grid_figure([display(r.method) for r in rows], n_blocks, [r.blocks for r in rows],
                               title=f"{model}: {granularity} blocks dropped at n={n_prune} (reference calibration)")


# ----------------------------------------------------------------------------------------------- markdown


def _spread(values: list[float], n_plans: int, centre: Callable[[list[float]], float], digits: int = 2) -> str:
    """``centre (min–max)`` over the calibrations' plans; says how many are in it while some are unmeasured."""
    if len(values) < 2:
        return "–"
    text = f"{fmt(centre(values), digits)} ({fmt(min(values), digits)}–{fmt(max(values), digits)})"
    return text if len(values) >= n_plans else f"{text}, {len(values)} of {n_plans}"


def _row_cells(study: Study, r: Row, with_tasks: bool) -> list[str]:
    cells = [display(r.method), _blocks(r.blocks)] + [fmt(r.ppl.get(c)) for c in study.corpora]
    cells += [fmt(r.ppl_ratio), _spread(r.ppl_ratio_all, r.n_calibrations, geomean)]
    if with_tasks:
        cells += [fmt(r.avg_acc, 3), fmt(r.rel, 1),
                  _spread(r.acc_all, r.n_calibrations, lambda v: sum(v) / len(v), 3)]
    cells += [fmt(r.stability), f"`{short(r.evaluation_run)}`"]
    return cells


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


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
        lines += _table(hdr, rows) + [""]
    for gran in ("layer", "attention"):
        cells_n = study.cells(model, gran)
        if not cells_n:
            continue
        lines += [f"### {gran.capitalize()} pruning", ""]
        for what in ("ppl", "acc"):
            if what == "acc" and not any(r.avg_acc is not None for n in cells_n for r in study.rows(model, gran, n)):
                continue
            name = f"{model}-{gran}-{what}.png"
            _save(curve_figure(study, model, gran, what), fig_dir / name)
            lines += [f"![{model} {gran} {what}]({rel_dir}/{name})", ""]
        name = f"{model}-{gran}-dropped-n{cells_n[-1]}.png"
        _save(dropped_figure(study, model, gran, cells_n[-1], n_blocks), fig_dir / name)
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
            lines += _table(hdr, [_row_cells(study, r, with_tasks) for r in rows]) + [""]
    return lines


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
            row = [display(mid)]
            for n in cells_n:
                s = study.stability_split(model, gran, mid, n)
                row.append(" / ".join(fmt(s[k]) for k in ("all", "seeds", "corpora")))
            rows.append(row)
        lines += [f"{gran.capitalize()} plans, mean pairwise Jaccard of the dropped blocks "
                  f"({len(study.plans(model, gran, methods[0], cells_n[0]))} calibrations):", ""]
        lines += _table(hdr, rows) + [""]
    return lines


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
    lines += _table(hdr, rows) + [""]
    lines += ["Exact MI scores computed per selection (mean over calibrations): Fast-Block-Select against brute "
              "force, the number MI-PRUN's Fast-Block-Select exists to cut.", ""]
    hdr = ["model", "n_prune", "greedy", "FBS", "brute force", "FBS = brute?"]
    rows = []
    for m in study.models:
        for n in study.cells(m, "layer"):
            ex = study.exact_scores(m, n)
            if not ex:
                continue
            fbs = study.plans(m, "layer", "mi_fbs/mi.ksg", n)
            brute = {(s.corpus, s.seed): s.blocks for s in study.plans(m, "layer", "mi_brute/mi.ksg", n)}
            same = sum(1 for s in fbs if brute.get((s.corpus, s.seed)) == s.blocks)
            rows.append([m, str(n)] + [fmt(ex.get(k), 1) for k in ("mi_greedy/mi.ksg", "mi_fbs/mi.ksg",
                                                                    "mi_brute/mi.ksg")]
                        + [f"{same}/{len(fbs)}" if fbs else "–"])
    lines += _table(hdr, rows) + [""]
    lines += time_lines(study, spec)
    return lines


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
    return lines + _table(hdr, rows) + [""] + tail


def _best(rows: list[Row], key: str) -> Row | None:
    vals = [r for r in rows if getattr(r, key) is not None and r.method not in ("sequential", "reverse")]
    if not vals:
        return None
    return min(vals, key=lambda r: r.ppl_ratio) if key == "ppl_ratio" else max(vals, key=lambda r: r.avg_acc)


def _noise_text(study: Study) -> str:
    noise = study.accuracy_noise()
    if noise is None:
        return ""
    return (f" With the lm-eval limits above, one task's accuracy has a standard error of about ±{noise[0]:.3f} "
            f"and the average about ±{noise[1]:.3f} (binomial, p = 0.5): read accuracy differences below that as "
            "ties; perplexity is the sharper signal.")


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
            cells.append(f"{len(r.blocks)} {gran}s by {display(r.method)}: ppl× {fmt(r.ppl_ratio)}, "
                         f"{100 * kept:.1f}% of the parameters{acc} (`{short(r.evaluation_run)}`)")
        rows.append(cells)
    if not models or all(c == NO_PLAN for row in rows for c in row[1:]):
        return []
    return ["## Which plan to pick", "",
            "For a perplexity budget (ppl× at most the given factor), the reference-calibration plan of any "
            "method and granularity that leaves the fewest parameters (embeddings included, so attention-only "
            "plans save less than their block count suggests). Only the grid's block counts are tried.", ""] + \
        _table(["ppl× budget"] + models, rows) + [""]


def correlation_section(study: Study, fig_dir: Path, rel_dir: str) -> list[str]:
    """Spearman's ρ between ppl× and each task's accuracy over every measured plan, and the scatter."""
    plans = {m: study.measured_plans(m) for m in study.models}
    models = [m for m in study.models if len(plans[m]) >= 3]
    if not models:
        return []
    _save(tradeoff_figure(study, plans), fig_dir / "ppl-vs-accuracy.png")
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
    return lines + _table(hdr, rows) + [""]


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
        if accs:
            text += (f"; of its {len(accs)} pruned plans with lm-eval results, {sum(a <= constant for a in accs)} "
                     "score no more than the best constant answer")
            if noise is not None:
                text += f" and {sum(a <= chance + noise[1] for a in accs)} are within ±{noise[1]:.3f} of chance"
        out.append(text + ".")
    return out


def summary_section(study: Study) -> list[str]:
    """Sentences computed from the rows: winners per cell and the papers' claims, counted."""
    lines = ["## Summary (generated from the tables below)", ""]
    claims: dict[str, list[bool]] = {"entro": [], "mi": [], "mi_vs_entro": []}
    claims_acc: dict[str, list[float]] = {"entro": [], "mi": []}  # best avg acc − ShortGPT's, per cell
    wins: list[tuple[str, str, int, Row, Row]] = []  # (model, granularity, n, best of a family, ShortGPT)
    cells: list[list[Row]] = []
    for m in study.models:
        for gran in ("layer", "attention"):
            for n in study.cells(m, gran):
                rows = study.rows(m, gran, n)
                cells.append(rows)
                best = _best(rows, "ppl_ratio")
                best_acc = _best(rows, "avg_acc")
                if best is None:
                    continue
                text = f"- **{m}, {n} {gran}s**: lowest perplexity: {display(best.method)} (ppl× {fmt(best.ppl_ratio)})"
                if best_acc is not None:
                    text += f"; best average accuracy: {display(best_acc.method)} ({fmt(best_acc.avg_acc, 3)})"
                lines.append(text)
                by = {r.method: r for r in rows}
                sg = by.get("shortgpt")
                entro, mi = ([r for r in rows if family(r.method) == f and r.ppl_ratio is not None]
                             for f in ("entrodrop", "mi"))
                if sg and sg.ppl_ratio is not None:
                    if entro:
                        claims["entro"].append(min(r.ppl_ratio for r in entro) < sg.ppl_ratio)  # type: ignore[type-var]
                    if mi:
                        claims["mi"].append(min(r.ppl_ratio for r in mi) < sg.ppl_ratio)  # type: ignore[type-var]
                    if sg.avg_acc is not None:
                        for fam, group in (("entro", entro), ("mi", mi)):
                            scored = [r for r in group if r.avg_acc is not None]
                            if scored:
                                top = max(scored, key=lambda r: r.avg_acc)  # type: ignore[arg-type,return-value]
                                claims_acc[fam].append(top.avg_acc - sg.avg_acc)  # type: ignore[operator]
                                wins.append((m, gran, n, top, sg))
                if mi and entro:
                    claims["mi_vs_entro"].append(min(r.ppl_ratio for r in mi)  # type: ignore[type-var]
                                                 < min(r.ppl_ratio for r in entro))  # type: ignore[type-var]
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

    lines += [
        "The papers' claims, counted over the (model, granularity, n_prune) cells above, on the reference "
        "calibration's plans (perplexity: geometric mean over the evaluation corpora):", "",
        f"- *EntroDrop beats ShortGPT's BI* (best of its entropy estimators, lower perplexity): "
        f"holds in {count(claims['entro'])} cells"
        + count_acc(claims_acc["entro"]) + ".",
        f"- *MI-PRUN beats ShortGPT* (best of greedy / FBS / brute force): holds in {count(claims['mi'])} cells"
        + count_acc(claims_acc["mi"]) + ".",
        f"- *MI-PRUN beats EntroDrop*: holds in {count(claims['mi_vs_entro'])} cells.",
    ]
    if noise is not None:
        lines += _accuracy_wins(wins, noise[1])
    lines += all_calibration_claims(cells, None if noise is None else noise[1])
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
                     f"{fmt(lo[2])} ({display(lo[1])}, {lo[0]}) to {fmt(hi[2])} ({display(hi[1])}, {hi[0]}).")
    lines.append("")
    return lines


def _over_calibrations(r: Row) -> tuple[float, float] | None:
    """A method's geometric-mean ppl× and mean average accuracy over every calibration's plan, when all of
    them are measured (a partial mean would compare different calibrations)."""
    if r.n_calibrations < 2 or len(r.ppl_ratio_all) < r.n_calibrations or len(r.acc_all) < r.n_calibrations:
        return None
    return geomean(r.ppl_ratio_all), sum(r.acc_all) / len(r.acc_all)


def all_calibration_claims(cells: Sequence[Sequence[Row]], noise: float | None) -> list[str]:
    """The papers' claims counted again over ``cells`` (each cell's rows, as ``Study.rows`` gives them) with
    each method judged by all its calibrations' plans, not by the reference calibration's alone. Why: one
    calibration is one draw; a plan that wins only on it is luck of the corpus and seed, and the stability
    tables show such plans differ from draw to draw."""
    ppl: dict[str, list[bool]] = {"entro": [], "mi": [], "mi_vs_entro": []}
    acc: dict[str, list[float]] = {"entro": [], "mi": []}
    k = 0
    for rows in cells:
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
    return [f"- *The same claims over all {k} calibrations* (each method's geometric-mean ppl× and mean average "
            f"accuracy over its plans from every calibration, cells where all are measured): {'; '.join(parts)}."]


def _accuracy_wins(wins: list[tuple[str, str, int, Row, Row]], noise: float) -> list[str]:
    """The accuracy wins over ShortGPT beyond the noise, each with the task that moved most and both
    perplexities: a win carried by one task, at a worse perplexity, is not the papers' claim holding."""
    out, held = [], 0
    for m, gran, n, top, sg in wins:
        if top.avg_acc is None or sg.avg_acc is None or top.avg_acc - sg.avg_acc <= noise:
            continue
        moved = {t: a - sg.accuracy[t] for t, a in top.accuracy.items() if t in sg.accuracy}
        task = max(moved, key=lambda t: abs(moved[t])) if moved else None
        text = f"  - {m}, {n} {gran}s: {display(top.method)} {fmt(top.avg_acc, 3)} vs ShortGPT {fmt(sg.avg_acc, 3)}"
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


def infeasible_section(study: Study) -> list[str]:
    if not study.infeasible:
        return []
    lines = ["## Selections a method could not make", "",
             "Recorded, not failed: the method's own rule leaves fewer droppable blocks than asked for.", ""]
    rows = [[r.tags.get("model", ""), f"{r.tags.get('corpus')} seed {r.tags.get('seed')}",
             display(r.tags.get("label") or method_id(r.tags.get("method", ""), r.tags.get("estimator"))),
             r.tags.get("granularity", ""),
             r.tags.get("n_prune", ""), r.tags.get("infeasible", "(reason not in this export)"), f"`{short(r.run_id)}`"] for r in study.infeasible]
    return lines + _table(["model", "calibration", "method", "granularity", "n_prune", "why", "run"], rows) + [""]


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
        cells = [display(mid)]
        for c in cols:
            r = grid[c].get(mid)
            v = None if r is None else r.ppl_ratio
            cells.append("–" if v is None else (f"**{fmt(v)}**" if v == best[c] else fmt(v)))
        rows.append(cells)
    hdr = ["ppl× (reference plan)"] + [f"{m} −{n}" for m, n in cols]
    return [f"**Headline ({granularity} pruning).** Perplexity ÷ dense (geometric mean over the evaluation "
            "corpora) of each method's reference-calibration plan; lowest per column in bold.", ""] + \
        _table(hdr, rows) + [""]


def coverage(study: Study, spec: StudySpec) -> dict[str, int]:
    keys = {s.plan_key for s in study.selections}
    with_tasks = [k for k in keys if k in study.evaluations and study.avg_accuracy(study.evaluations[k]) is not None]
    n_trials = sum(len(spec.trials(m)) for m in spec.models) * len(spec.calibrations())
    return {"trials": n_trials, "selections": len(study.selections) + len(study.infeasible), "plans": len(keys),
            "plans_ppl": sum(1 for k in keys if k in study.evaluations), "plans_lm_eval": len(with_tasks)}


def _shown(source: str) -> str:
    """The spec's path as a reader can find it: relative to the checkout when it lies inside it."""
    path = Path(source)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return source


def render(study: Study, spec: StudySpec, runs: Sequence[Any], fig_dir: Path, rel_dir: str, command: str,
           n_blocks: dict[str, int]) -> str:
    cov = coverage(study, spec)
    complete = cov["selections"] == cov["trials"] and cov["plans_ppl"] == cov["plans"] and (
        not study.tasks or spec.evaluation.lm_eval_scope != "all" or cov["plans_lm_eval"] == cov["plans"])
    tasks = ", ".join(f"{t} ({'full' if lim is None else f'first {lim}' + (' per subject' if t == 'mmlu' else '')})"
                      for t, lim in spec.evaluation.tasks) or "none"
    lines = ["# Results: which blocks to remove, and what it costs" + (" — QUICK GRID" if spec.quick else ""), ""]
    if spec.quick:
        lines += ["> **Quick mode.** A small grid (fewer tokens, block counts, corpora and tasks) that finishes in "
                  "minutes on a CPU; it checks the pipeline, not the science. The full study is "
                  "`python -m blockprune.jobs.study` (see docs/RESULTS.md).", ""]
    if not complete:
        lines += [f"> **Partial results.** {cov['selections']} of {cov['trials']} selections, perplexity for "
                  f"{cov['plans_ppl']} and lm-eval for {cov['plans_lm_eval']} of {cov['plans']} distinct plans are "
                  "done. Run the same command again to resume; finished work is skipped (on another machine, add "
                  f"`--import-runs` with this page's `{rel_dir}/runs.json` once: it recreates these runs in the new "
                  "MLflow store). "
                  "Work runs in this order: "
                  "the reference calibration's selections and their perplexity, the other calibrations' selections, "
                  "lm-eval of the reference plans (each model's from the lowest perplexity up), then the other "
                  "plans' perplexity and lm-eval; a cell not measured yet shows –.", ""]
    lines += [
        f"Generated by `{command}` on {dt.date.today().isoformat()} from the MLflow experiment "
        f"`{spec.experiment}` (study `{spec.name}`, grid `{spec.fingerprint}`, spec `{_shown(spec.source)}`); "
        "nothing here is typed by hand. Each table row names its evaluation run (first 8 characters of the MLflow "
        f"run id); [`{rel_dir}/runs.json`]({rel_dir}/runs.json) holds every run this page used (tags, "
        "parameters, metrics; runs recreated from an earlier export keep the original id in "
        "`study.origin_run_id`).", "",
        "**Setup.** Models: " + ", ".join(f"`{m.name}` ({n_blocks.get(m.name, '?')} layers)" for m in spec.models)
        + f". Calibration: {spec.n_samples} × {spec.seq_len} tokens of each of "
        + ", ".join(f"`{c}`" for c in spec.corpora) + f", seeds {', '.join(map(str, spec.seeds))} "
        f"({len(spec.calibrations())} calibrations per model; the *reference* calibration is `{spec.corpora[0]}` "
        f"seed {spec.seeds[0]}), {spec.capture.sample_rows} sampled tokens per block boundary for the "
        f"estimators. Evaluation: held-out perplexity on {spec.evaluation.windows} × {spec.evaluation.seq_len} "
        "tokens of each corpus's held-out documents (every 10th document, never calibrated on); lm-eval, 0-shot: "
        f"{tasks}" + ("" if spec.evaluation.lm_eval_dtype == "float32" else
                      f", forward passes under {spec.evaluation.lm_eval_dtype} autocast (log-softmax in float32)")
        + ".", "",
        "**Columns.** *dropped (ref.)*: the reference calibration's plan. *ppl×*: its perplexity ÷ the dense "
        "model's, geometric mean over the evaluation corpora. *ppl× all cal.*: the same for every calibration's "
        "plan, geometric mean (min–max), with how many of the plans it covers while some are not measured yet. "
        "*avg acc*: mean over the tasks of acc_norm where defined, else acc. "
        "*rel. %*: avg acc ÷ dense avg acc (ShortGPT's *rel.*; it counts from 0, not from chance). *avg acc all cal.*: avg acc of every calibration's "
        "plan that has lm-eval results, mean (min–max). *stability J*: mean pairwise Jaccard of the "
        "dropped blocks over all calibrations. Under each dense model: *chance*, the accuracy of a uniform random "
        "guess, and *best constant answer*, of always giving the answer position that is right most often in "
        "these documents (no model; a limited run's first documents need not be balanced)." + _noise_text(study),
        "",
    ]
    lines += headline(study, "layer") + headline(study, "attention")
    lines += summary_section(study)
    lines += budget_section(study)
    lines += correlation_section(study, fig_dir, rel_dir)
    for m in study.models:
        lines += model_section(study, spec, m, n_blocks.get(m, 0), fig_dir, rel_dir)
    lines += ["## Plan stability", "", "Mean pairwise Jaccard of dropped blocks: over all calibrations, over pairs "
              "that differ only in seed, and over pairs that differ only in corpus (1 = the same blocks every time). "
              "sequential and reverse are fixed and left out.", ""]
    for m in study.models:
        lines += stability_section(study, m)
    lines += infeasible_section(study)
    lines += cost_section(study, spec)
    lines += ["## Reproduce", "", "```bash", command, "```", "",
              f"Resumable: stores and scores are reused and finished runs skipped. Runs used: {len(runs)}.", ""]
    return "\n".join(lines)


def write_report(spec: StudySpec, tracking_uri: str, out: str | Path, command: str) -> Path:
    from blockprune.study.spec import validate

    out = Path(out)
    n_blocks = validate(spec)
    study, runs = load_study(spec, tracking_uri)
    rel_dir = out.stem.lower()
    fig_dir = out.parent / rel_dir
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    text = render(study, spec, runs, fig_dir, rel_dir, command, n_blocks)
    (fig_dir / "runs.json").write_text(json.dumps({"tracking_uri_kind": tracking_uri.split(":")[0],
                                                   "experiment": spec.experiment, "study": spec.name,
                                                   "fingerprint": spec.fingerprint, "runs": export(runs)},
                                                  indent=1, sort_keys=True))
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out
