"""docs/RESULTS.md from the study's MLflow runs: tables, figures, stability, cost and a generated summary.

Nothing in the report is typed by hand: every number is read from a run, every table row names the run
it came from (short id; ``runs.json`` beside the report holds the full runs), and the summary sentences
are computed from the same rows. This module composes the page; the parts live beside it:
``sections`` (the tables), ``claims`` (the generated sentences), ``figures`` (the plots), ``markdown``
(formatting) and ``tables`` (the :class:`Study` every one of them reads).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from blockprune.study.claims import noise_text, reference_reading, summary_section
from blockprune.study.contrast import contrast_section
from blockprune.study.heal import heal_rows, heal_section, heal_summary
from blockprune.study.record import RunRecord, StudyLog, export, traced
from blockprune.study.sections import (
    budget_section,
    correlation_section,
    cost_section,
    headline,
    infeasible_section,
    model_section,
    stability_section,
)
from blockprune.study.spec import StudySpec, load_spec, validate
from blockprune.study.tables import Study, family


def load_study(spec: StudySpec, tracking_uri: str) -> tuple[Study, list[Any]]:
    slog = StudyLog(tracking_uri, spec.experiment, spec.name, spec.fingerprint)
    runs = [traced(r) for r in slog.runs()]  # the ids of the ledger the store may have been imported from
    return study_from_runs(spec, runs), runs


def study_from_runs(spec: StudySpec, runs: Sequence[RunRecord]) -> Study:
    """The spec's view of a set of runs: from the store, or from a report's ``runs.json`` without MLflow."""
    return Study.from_runs(runs, [t for t, _ in spec.evaluation.tasks], list(spec.evaluation.corpora),
                           [m.name for m in spec.models], spec.evaluation.tasks_tag,
                           spec.evaluation.docs_tag, spec.display_names,
                           [m.label for m in spec.layer_methods + spec.attention_methods])


def ledger_runs(path: str | Path) -> list[RunRecord]:
    """The runs of a report's ``runs.json`` (what :func:`~blockprune.study.record.export` wrote)."""
    return [RunRecord(r["run_id"], dict(r["tags"]), dict(r["metrics"]), "FINISHED", dict(r.get("params", {})))
            for r in json.loads(Path(path).read_text())["runs"]]


def coverage(study: Study, spec: StudySpec) -> dict[str, int]:
    keys = {s.plan_key for s in study.selections}
    with_tasks = [k for k in keys if k in study.evaluations and study.avg_accuracy(study.evaluations[k]) is not None]
    # what lm-eval must cover: every plan, or (scope "reference") the reference calibration's plans
    lm_keys = keys if spec.evaluation.lm_eval_scope == "all" else {s.plan_key for s in study.selections if s.reference}
    n_trials = sum(len(spec.trials(m)) for m in spec.models) * len(spec.calibrations())
    heals = heal_rows(study, spec.heal) if spec.heal is not None else []
    return {"trials": n_trials, "selections": len(study.selections) + len(study.infeasible), "plans": len(keys),
            "plans_ppl": sum(1 for k in keys if k in study.evaluations),
            "plans_lm_eval": len(set(with_tasks) & lm_keys), "plans_lm_scope": len(lm_keys),
            "heal_targets": len(heals), "healed": sum(1 for _, r in heals if r is not None)}


def is_complete(study: Study, cov: dict[str, int]) -> bool:
    """Every trial selected, every plan's perplexity and (in scope) lm-eval measured, every healing done."""
    return cov["selections"] == cov["trials"] and cov["plans_ppl"] == cov["plans"] and (
        not study.tasks or cov["plans_lm_eval"] == cov["plans_lm_scope"]) and cov["healed"] == cov["heal_targets"]


def see_also_line(spec: StudySpec, out: Path | None) -> list[str]:
    """The header line naming the spec's other reports, linked relative to this report's folder."""
    if not spec.see_also:
        return []
    base = (out or Path("docs/RESULTS.md")).parent
    links = []
    for path in spec.see_also:
        target = Path(path)
        try:
            href = Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()
        except ValueError:  # another drive: keep the path as written
            href = target.as_posix()
        links.append(f"[{target.as_posix()}]({href})")
    return ["See also: " + ", ".join(links) + ".", ""]


def _calibrations_text(spec: StudySpec) -> str:
    cals = spec.calibrations()
    ref = f"the *reference* calibration is `{cals[0].corpus}` seed {cals[0].seed}"
    if spec.pairs:
        return ", ".join(f"`{c.corpus}` seed {c.seed}" for c in cals) + f" ({len(cals)} calibrations per model; {ref})"
    return ("each of " + ", ".join(f"`{c}`" for c in spec.corpora) + f", seeds {', '.join(map(str, spec.seeds))} "
            f"({len(cals)} calibrations per model; {ref})")


def _shown(source: str) -> str:
    """The spec's path as a reader can find it: relative to the checkout when it lies inside it."""
    path = Path(source)
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return source


def readings_text(study: Study, spec: StudySpec) -> list[str]:
    """Which rows are the papers' methods as their authors ran them and which are labelled variants (only when
    the spec has both): a reader comparing two EntroDrop rows must know which one is the paper's."""
    labels = dict.fromkeys(m.label for m in spec.layer_methods + spec.attention_methods if family(m.label) != "base")
    names = spec.display_names
    authors = [names.get(m) or study.name(m) for m in labels if reference_reading(m)]
    variants = [names.get(m) or study.name(m) for m in labels if not reference_reading(m)]
    if not authors or not variants:
        return []
    return [f"**Readings.** Each paper's method as its authors ran it (the method's default; README, \"Which "
            f"reading each method follows\"): {', '.join(authors)}. Labelled variants, kept beside them for "
            f"comparison and never counted as the paper's method: {', '.join(variants)}. The summary judges the "
            "papers' claims on the first and reports the best of all readings separately.", ""]


def contrast_lines(study: Study, spec: StudySpec) -> list[str]:
    """The spec's ``compare_with`` study, read from its committed report's ``runs.json`` (paths from the
    checkout), set against this one (:mod:`blockprune.study.contrast`)."""
    if spec.compare_with is None:
        return []
    report, spec_path = spec.compare_with
    ledger = Path(report).parent / Path(report).stem.lower() / "runs.json"
    if not ledger.is_file() or not Path(spec_path).is_file():
        return [f"## Compared with {report}", "", f"Not available here: {ledger} or {spec_path} is missing.", ""]
    other_spec = load_spec(spec_path)
    other = study_from_runs(other_spec, ledger_runs(ledger))
    cov = coverage(other, other_spec)
    partial = None if is_complete(other, cov) else (
        f"{report} is partial ({cov['selections']} of {cov['trials']} selections, perplexity for {cov['plans_ppl']} "
        f"of {cov['plans']} plans, lm-eval for {cov['plans_lm_eval']} of {cov['plans_lm_scope']}): its column counts "
        "only the cells measured so far, and a reading not measured yet shows –.")
    return contrast_section(study, other, report, partial)


def render(study: Study, spec: StudySpec, runs: Sequence[Any], fig_dir: Path, rel_dir: str, command: str,
           n_blocks: dict[str, int], out: Path | None = None) -> str:
    """The page; ``out`` (the report's path) places the links of the spec's ``see_also`` reports."""
    cov = coverage(study, spec)
    complete = is_complete(study, cov)
    lm_scope = "" if spec.evaluation.lm_eval_scope == "all" else " (the reference calibration's)"
    tasks = ", ".join(f"{t} ({'full' if lim is None else f'first {lim}' + (' per subject' if t == 'mmlu' else '')})"
                      for t, lim in spec.evaluation.tasks) or "none"
    lines = ["# Results: which blocks to remove, and what it costs" + (" — QUICK GRID" if spec.quick else ""), ""]
    if spec.quick:
        full = ("`python -m blockprune.jobs.study` (see docs/RESULTS.md)" if not spec.see_also else
                f"in {spec.see_also[0]}")
        lines += ["> **Quick mode.** A small grid (fewer tokens, block counts, corpora and tasks) that finishes in "
                  f"minutes on a CPU; it checks the pipeline, not the science. The full study is {full}.", ""]
    lines += see_also_line(spec, out)
    if not complete:
        lines += [f"> **Partial results.** {cov['selections']} of {cov['trials']} selections, perplexity for "
                  f"{cov['plans_ppl']} of {cov['plans']} distinct plans and lm-eval for {cov['plans_lm_eval']} of "
                  f"{cov['plans_lm_scope']}{lm_scope} are done" + (f", {cov['healed']} of {cov['heal_targets']} healings" if spec.heal is not None else "")
                  + ". Run the same command again to resume; finished work is skipped (on another machine, add "
                  f"`--import-runs` with this page's `{rel_dir}/runs.json` once: it recreates these runs in the new "
                  "MLflow store). "
                  "Work runs in this order: "
                  "the reference calibration's selections and their perplexity, the other calibrations' selections, "
                  "lm-eval of the reference plans (each model's from the lowest perplexity up), then the other "
                  "plans' perplexity and lm-eval" + (", then the healings" if spec.heal is not None else "")
                  + "; a cell not measured yet shows –.", ""]
    lines += [
        f"Generated by `{command}` on {dt.date.today().isoformat()} from the MLflow experiment "
        f"`{spec.experiment}` (study `{spec.name}`, grid `{spec.fingerprint}`, spec `{_shown(spec.source)}`); "
        "nothing here is typed by hand. Each table row names its evaluation run (first 8 characters of the MLflow "
        f"run id); [`{rel_dir}/runs.json`]({rel_dir}/runs.json) holds every run this page used (tags, "
        "parameters, metrics); a run keeps the id it was first logged with when the study moves to another machine "
        "(`--import-runs`; the new store tags it `study.origin_run_id`).", "",
        "**Setup.** Models: " + ", ".join(f"`{m.name}` ({n_blocks.get(m.name, '?')} layers)" for m in spec.models)
        + f". Calibration: {spec.n_samples} × {spec.seq_len} tokens of " + _calibrations_text(spec)
        + f", {spec.capture.sample_rows} sampled tokens per block boundary for the "
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
        "these documents (no model; a limited run's first documents need not be balanced)." + noise_text(study),
        "",
    ]
    lines += readings_text(study, spec)
    lines += headline(study, "layer") + headline(study, "attention")
    lines += summary_section(study) + heal_summary(study, spec)
    lines += contrast_lines(study, spec)
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
    lines += heal_section(study, spec)
    lines += cost_section(study, spec)
    lines += ["## Reproduce", "", "```bash", command, "```", "",
              f"Resumable: stores and scores are reused and finished runs skipped. Runs used: {len(runs)}.", ""]
    return "\n".join(lines)


def write_report(spec: StudySpec, tracking_uri: str, out: str | Path, command: str) -> Path:
    out = Path(out)
    n_blocks = validate(spec)
    study, runs = load_study(spec, tracking_uri)
    rel_dir = out.stem.lower()
    fig_dir = out.parent / rel_dir
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()
    text = render(study, spec, runs, fig_dir, rel_dir, command, n_blocks, out)
    (fig_dir / "runs.json").write_text(json.dumps({"tracking_uri_kind": tracking_uri.split(":")[0],
                                                   "experiment": spec.experiment, "study": spec.name,
                                                   "fingerprint": spec.fingerprint, "runs": export(runs)},
                                                  indent=1, sort_keys=True))
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out
