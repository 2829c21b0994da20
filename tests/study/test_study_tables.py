"""The study's derived numbers from hand-made runs: ratios, rel., stability, claims, coverage, rendering."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from blockprune.study.claims import summary_section
from blockprune.study.record import RunRecord, baseline_key, calibration_key, plan_key, trial_key
from blockprune.study.report import coverage, render
from blockprune.study.spec import parse_spec
from blockprune.study.tables import Study, stability

MODEL = "m"
CORPORA = ["a", "b"]
TASKS = ["piqa", "boolq"]


def _sel(i: int, corpus: str, seed: int, method: str, est: str | None, n: int, blocks: tuple[int, ...],
         gran: str = "layer", exact: int = 0) -> RunRecord:
    ck = calibration_key(MODEL, corpus, seed, 8, 64)
    tags = {"study.kind": "selection", "study.key": trial_key(ck, method, est, gran, n), "model": MODEL,
            "corpus": corpus, "seed": str(seed), "reference": str(int(corpus == "a" and seed == 0)),
            "method": method, "estimator": est or "none", "granularity": gran, "n_prune": str(n),
            "blocks": ",".join(map(str, blocks)), "plan_key": plan_key(MODEL, gran, blocks)}
    return RunRecord(f"sel{i:05d}xxxx", tags, {"scoring_seconds": 1.5, "exact_scores": float(exact),
                                               "logged_at": float(i)})


def _eval(i: int, key: str, ppl_a: float, ppl_b: float, piqa: float | None = None,
          boolq: float | None = None, n: float | None = 50.0) -> RunRecord:
    m = {"ppl.a": ppl_a, "ppl.b": ppl_b, "params_total": 1e6, "logged_at": float(100 + i)}
    if piqa is not None:
        m["piqa.acc"], m["piqa.acc_norm"] = piqa - 0.1, piqa  # acc_norm wins where defined
    if boolq is not None:
        m["boolq.acc"] = boolq
    for task, acc in (("piqa", piqa), ("boolq", boolq)):
        if acc is not None and n is not None:
            m[f"{task}.n"] = n
    return RunRecord(f"ev{i:06d}yyyy", {"study.kind": "evaluation", "study.key": key}, m)


@pytest.fixture
def study() -> Study:
    runs = [
        _sel(1, "a", 0, "shortgpt", None, 2, (3, 4)),
        _sel(2, "b", 0, "shortgpt", None, 2, (3, 5)),
        _sel(3, "a", 1, "shortgpt", None, 2, (3, 4)),
        _sel(4, "a", 0, "entrodrop", "entropy.knn", 2, (1, 2)),
        _sel(5, "b", 0, "entrodrop", "entropy.knn", 2, (1, 2)),
        _sel(6, "a", 1, "entrodrop", "entropy.knn", 2, (6, 7)),
        _sel(7, "a", 0, "mi_fbs", "mi.ksg", 2, (3, 4), exact=11),
        _sel(8, "a", 0, "mi_brute", "mi.ksg", 2, (3, 4), exact=17),
        _eval(1, plan_key(MODEL, "", None), 10.0, 20.0, 0.8, 0.6),
        _eval(2, plan_key(MODEL, "layer", (3, 4)), 20.0, 80.0, 0.6, 0.6),
        _eval(3, plan_key(MODEL, "layer", (3, 5)), 40.0, 40.0),
        _eval(4, plan_key(MODEL, "layer", (1, 2)), 15.0, 30.0, 0.7, 0.7),
        _eval(5, plan_key(MODEL, "layer", (6, 7)), 30.0, 60.0),
    ]
    return Study.from_runs(runs, TASKS, CORPORA, [MODEL])


def test_rows_ratios_accuracy_rel_and_stability(study: Study) -> None:
    rows = {r.method: r for r in study.rows(MODEL, "layer", 2)}
    assert list(rows) == ["shortgpt", "entrodrop/entropy.knn", "mi_fbs/mi.ksg", "mi_brute/mi.ksg"]
    sg = rows["shortgpt"]
    assert sg.blocks == (3, 4) and sg.evaluation_run == "ev000002yyyy"
    assert sg.ppl == {"a": 20.0, "b": 80.0}
    assert sg.ppl_ratio == pytest.approx(math.sqrt(2.0 * 4.0))  # geometric mean of 20/10 and 80/20
    assert sorted(sg.ppl_ratio_all) == pytest.approx(sorted([math.sqrt(8.0), math.sqrt(8.0), math.sqrt(4 * 2)]))
    assert sg.avg_acc == pytest.approx(0.6)  # piqa acc_norm 0.6, boolq acc 0.6
    assert sg.rel == pytest.approx(100 * 0.6 / 0.7)  # dense: (0.8 + 0.6) / 2
    # plans (3,4), (3,5), (3,4): Jaccard 1/3, 1/3, 1
    assert sg.stability == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    ed = rows["entrodrop/entropy.knn"]
    assert ed.ppl_ratio == pytest.approx(1.5) and ed.rel == pytest.approx(100.0)
    assert ed.stability == pytest.approx((1 + 0 + 0) / 3)


def test_stability_split_seeds_vs_corpora(study: Study) -> None:
    s = study.stability_split(MODEL, "layer", "entrodrop/entropy.knn", 2)
    assert s["seeds"] == pytest.approx(0.0)  # a/s0 (1,2) vs a/s1 (6,7)
    assert s["corpora"] == pytest.approx(1.0)  # a/s0 vs b/s0, both (1,2)
    assert stability([(1, 2)]) == 1.0


def test_missing_task_gives_no_average(study: Study) -> None:
    ev = study.evaluations[plan_key(MODEL, "layer", (3, 5))]
    assert study.avg_accuracy(ev) is None
    assert study.exact_scores(MODEL, 2) == {"mi_fbs/mi.ksg": 11.0, "mi_brute/mi.ksg": 17.0}


def test_summary_counts_claims(study: Study) -> None:
    text = "\n".join(summary_section(study))
    assert "lowest perplexity: EntroDrop · KNN (ppl× 1.50)" in text
    assert "*EntroDrop beats ShortGPT's BI* (best of its entropy estimators, lower perplexity): holds in 1 of 1" in text
    assert "*MI-PRUN beats ShortGPT* (best of greedy / FBS / brute force): holds in 0 of 1" in text
    # EntroDrop's plan scores 0.70 against ShortGPT's 0.60: a win beyond the noise of 50-question tasks
    # 2 tasks of 50 questions: standard error of the average sqrt(2 · 0.25 / 50) / 2 = 0.050
    assert study.accuracy_noise() == pytest.approx((0.5 / math.sqrt(50), 0.05))
    assert "lower perplexity): holds in 1 of 1 cells; by average accuracy in 1 of 1 (by more than ±0.050, one " \
           "standard error of an average accuracy, in 1)." in text
    assert "brute force): holds in 0 of 1 cells; by average accuracy in 0 of 1 (by more than ±0.050, one " \
           "standard error of an average accuracy, in 0)." in text


def test_claims_judge_each_method_as_its_authors_ran_it_then_the_variants() -> None:
    """EntroDrop's own reading (its default estimator) loses to ShortGPT; a labelled variant wins. The claim as the
    authors ran it must say 0 of 1, and the best-of-every-reading count 1 of 1, in a sentence of its own."""
    runs = [
        _sel(1, "a", 0, "shortgpt", None, 2, (3, 4)),
        _sel(2, "a", 0, "entrodrop", "entropy.knn_window", 2, (6, 7)),
        _sel(3, "a", 0, "entrodrop", "entropy.knn", 2, (1, 2)),
        _sel(4, "a", 0, "mi_fbs", "mi.perdim", 2, (1, 2)),
        _eval(1, plan_key(MODEL, "", None), 10.0, 20.0),
        _eval(2, plan_key(MODEL, "layer", (3, 4)), 20.0, 80.0),
        _eval(3, plan_key(MODEL, "layer", (6, 7)), 30.0, 90.0),
        _eval(4, plan_key(MODEL, "layer", (1, 2)), 15.0, 30.0),
    ]
    text = "\n".join(summary_section(Study.from_runs(runs, TASKS, CORPORA, [MODEL])))
    assert "*EntroDrop beats ShortGPT's BI*, EntroDrop as its authors ran it (the method's default reading, " \
           "lower perplexity): holds in 0 of 1 cells." in text
    assert "*MI-PRUN beats ShortGPT*, MI-PRUN as its authors ran it" in text and "estimator): holds in 1 of 1" in text
    assert "*MI-PRUN beats EntroDrop*, both as their authors ran them: holds in 1 of 1 cells." in text
    assert "the labelled variants included (a best-of-several, so it favours the method with more readings): " \
           "EntroDrop beats ShortGPT in 1 of 1 cells, MI-PRUN beats ShortGPT in 1 of 1 cells, MI-PRUN beats " \
           "EntroDrop in 0 of 1 cells." in text


def test_accuracy_wins_name_the_task_that_carried_them(study: Study) -> None:
    text = "\n".join(summary_section(study))
    assert "- Accuracy wins over ShortGPT beyond the noise: 1; 1 of them still ahead by more than ±0.050" in text
    assert ("  - m, 2 layers: EntroDrop · KNN 0.700 vs ShortGPT 0.600; largest task change piqa +0.10, without it "
            "0.700 vs 0.600; ppl× 1.50 vs 2.83") in text
    runs = [r for r in _runs(study) if r.key != plan_key(MODEL, "layer", (1, 2))]
    runs.append(_eval(4, plan_key(MODEL, "layer", (1, 2)), 15.0, 30.0, 0.9, 0.6))  # all of the win is piqa's
    text = "\n".join(summary_section(Study.from_runs(runs, TASKS, CORPORA, [MODEL])))
    assert "beyond the noise: 1; 0 of them still ahead" in text
    assert "largest task change piqa +0.30, without it 0.600 vs 0.600" in text


def test_accuracy_win_within_noise_is_counted_apart(study: Study) -> None:
    runs = [r for r in _runs(study) if r.key != plan_key(MODEL, "layer", (1, 2))]
    runs.append(_eval(4, plan_key(MODEL, "layer", (1, 2)), 15.0, 30.0, 0.64, 0.64))  # 0.64 vs ShortGPT's 0.60
    text = "\n".join(summary_section(Study.from_runs(runs, TASKS, CORPORA, [MODEL])))
    assert "by average accuracy in 1 of 1 (by more than ±0.050, one standard error of an average accuracy, in 0)." in text
    no_n = [r for r in runs if r.key != plan_key(MODEL, "", None)] + [_eval(1, plan_key(MODEL, "", None), 10.0,
                                                                           20.0, 0.8, 0.6, n=None)]
    s2 = Study.from_runs(no_n, TASKS, CORPORA, [MODEL])
    assert s2.accuracy_noise() is None  # lm-eval did not say how many questions: no noise claimed
    assert "by average accuracy in 1 of 1." in "\n".join(summary_section(s2))


def _spec_with_scope(scope: str) -> object:
    return parse_spec({"name": "t", "models": {MODEL: {"layer": [2]}},
                       "calibration": {"corpora": ["a", "b"], "seeds": [0, 1], "n_samples": 8, "seq_len": 64},
                       "methods": {"layer": ["shortgpt", "entrodrop/entropy.knn", "mi_fbs/mi.ksg", "mi_brute/mi.ksg"]},
                       "evaluation": {"tasks": {"piqa": 5, "boolq": 5}, "lm_eval_scope": scope}})


def test_lm_eval_coverage_counts_the_plans_its_scope_names(study: Study, tmp_path: Path) -> None:
    """Scope "reference": the report is complete only when the reference calibration's plans all have lm-eval
    (plans (3,4) and (1,2) here), and the banner counts those, not every distinct plan."""
    cov = coverage(study, _spec_with_scope("reference"))  # type: ignore[arg-type]
    assert (cov["plans_lm_eval"], cov["plans_lm_scope"], cov["plans"]) == (2, 2, 4)
    cov = coverage(study, _spec_with_scope("all"))  # type: ignore[arg-type]
    assert (cov["plans_lm_eval"], cov["plans_lm_scope"]) == (2, 4)
    runs = [r for r in _runs(study) if r.key != plan_key(MODEL, "layer", (1, 2))]
    runs.append(_eval(4, plan_key(MODEL, "layer", (1, 2)), 15.0, 30.0))  # perplexity only
    partial = Study.from_runs(runs, TASKS, CORPORA, [MODEL])
    spec = _spec_with_scope("reference")
    cov = coverage(partial, spec)  # type: ignore[arg-type]
    assert (cov["plans_lm_eval"], cov["plans_lm_scope"]) == (1, 2)
    text = render(partial, spec, [], tmp_path, "figs", "cmd", {MODEL: 8})  # type: ignore[arg-type]
    assert "perplexity for 4 of 4 distinct plans and lm-eval for 1 of 2 (the reference calibration's) are done" in text


def test_render_names_runs_and_flags_partial(study: Study, tmp_path: Path) -> None:
    spec = parse_spec({"name": "t", "models": {MODEL: {"layer": [2]}},
                       "calibration": {"corpora": ["a", "b"], "seeds": [0, 1], "n_samples": 8, "seq_len": 64},
                       "methods": {"layer": ["shortgpt", "entrodrop/entropy.knn", "mi_fbs/mi.ksg", "mi_brute/mi.ksg"]},
                       "evaluation": {"tasks": {"piqa": 5, "boolq": 5}}})
    text = render(study, spec, [], tmp_path, "figs", "cmd", {MODEL: 8})
    assert "> **Partial results.** 8 of 16 selections" in text
    assert "| ShortGPT (BI) | 3 4 | 20.00 | 80.00 | 2.83 |" in text
    assert "`ev000002`" in text
    # every calibration's ShortGPT plan has a perplexity; one of three has no accuracy yet, and the cell says so
    assert "| 2.83 | 2.83 (2.83–2.83) | 0.600 | 85.7 | 0.600 (0.600–0.600), 2 of 3 |" in text
    assert (tmp_path / "m-layer-ppl.png").stat().st_size > 1000


def test_curves_get_one_panel_per_family_with_shortgpt_as_yardstick(study: Study) -> None:
    import matplotlib.pyplot as plt

    from blockprune.study.figures import curve_figure

    fig = curve_figure(study, MODEL, "layer", "acc")
    try:
        titles = [ax.get_title() for ax in fig.axes]
        labels = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    finally:
        plt.close(fig)
    assert titles == ["ShortGPT", "EntroDrop", "MI-PRUN"]
    assert labels == [["ShortGPT (BI)", "dense"], ["ShortGPT (BI)", "EntroDrop · KNN", "dense"],
                      ["ShortGPT (BI)", "MI-PRUN FBS · KSG", "MI-PRUN brute force · KSG", "dense"]]  # KSG: not the default


def test_infeasible_selection_is_listed_not_evaluated(study: Study, tmp_path: Path) -> None:
    from blockprune.study.sections import infeasible_section

    bad = _sel(9, "b", 1, "entrodrop", "entropy.knn", 2, ())
    bad.tags.pop("blocks"), bad.tags.pop("plan_key")
    bad.tags["infeasible"] = "cannot drop 2 blocks: only 1 blocks after S_start"
    s2 = Study.from_runs([*_runs(study), bad], TASKS, CORPORA, [MODEL])
    assert len(s2.selections) == len(study.selections) and s2.infeasible == [bad]
    assert [len(r.ppl_ratio_all) for r in s2.rows(MODEL, "layer", 2)] == [
        len(r.ppl_ratio_all) for r in study.rows(MODEL, "layer", 2)]
    text = "\n".join(infeasible_section(s2))
    assert "| m | b seed 1 | EntroDrop · KNN | layer | 2 | cannot drop 2 blocks: only 1 blocks after S_start | `sel00009` |" in text
    # an export from before the reason was kept (no blocks, no reason) is still an infeasible selection
    del bad.tags["infeasible"]
    s3 = Study.from_runs([*_runs(study), bad], TASKS, CORPORA, [MODEL])
    assert s3.infeasible == [bad]
    assert "| 2 | (reason not in this export) | `sel00009` |" in "\n".join(infeasible_section(s3))


def _runs(study: Study) -> list[RunRecord]:
    sels = [RunRecord(s.run_id, {"study.kind": "selection", "study.key": s.run_id, "model": s.model,
                                 "corpus": s.corpus, "seed": str(s.seed), "reference": str(int(s.reference)),
                                 "method": s.method.split("/")[0], "label": s.method, "granularity": s.granularity,
                                 "n_prune": str(s.n_prune), "blocks": ",".join(map(str, s.blocks)),
                                 "plan_key": s.plan_key}, {"logged_at": 0.0}) for s in study.selections]
    evs = [RunRecord(e.run_id, {"study.kind": "evaluation", "study.key": k}, e.metrics)
           for k, e in study.evaluations.items()]
    return sels + evs


@pytest.mark.unit
def test_lm_eval_work_alternates_between_models() -> None:
    from blockprune.study.run import STAGES, _interleave

    a = [("smollm2", "tasks", f"s{i}") for i in range(3)]
    b = [("gemma3", "tasks", "g0")]
    assert _interleave([a, b]) == [a[0], b[0], a[1], a[2]]
    assert _interleave([]) == []
    # stability (other calibrations' selections) and the reference plans' accuracy come before the
    # perplexity of the other calibrations' plans
    assert STAGES.index("select") < STAGES.index("tasks-reference") < STAGES.index("ppl") < STAGES.index("tasks")


@pytest.mark.unit
def test_lm_eval_takes_plans_from_the_lowest_perplexity_up() -> None:
    from blockprune.study.run import _ppl_order

    corpora = ("wikipedia", "lee-news")

    def run(w: float | None, n: float | None) -> RunRecord:
        m = {k: v for k, v in (("ppl.wikipedia", w), ("ppl.lee-news", n)) if v is not None}
        return RunRecord("r", {}, m)

    dense, good, bad = run(20.0, 10.0), run(40.0, 12.0), run(1e6, 5.0)
    assert _ppl_order(dense, corpora) == pytest.approx((math.log(20) + math.log(10)) / 2)
    ranked = sorted([bad, None, good, run(30.0, None), dense], key=lambda r: _ppl_order(r, corpora))
    assert ranked[:3] == [dense, good, bad]
    assert all(_ppl_order(r, corpora) == math.inf for r in ranked[3:])  # unmeasured: last


@pytest.mark.unit
def test_lm_eval_results_of_other_settings_are_not_mixed_in() -> None:
    """A run whose tasks_done tag is not the spec's (other limits or lm-eval dtype) shows no accuracy yet."""
    ev = _eval(1, plan_key(MODEL, "", None), 10.0, 20.0, 0.8, 0.6)
    current = RunRecord(ev.run_id, ev.tags | {"tasks_done": "piqa:50,boolq:50;bfloat16"}, ev.metrics)
    older = RunRecord(ev.run_id, ev.tags | {"tasks_done": "piqa:50,boolq:50"}, ev.metrics)
    for run, acc in ((current, pytest.approx(0.7)), (older, None)):
        s = Study.from_runs([run], TASKS, CORPORA, [MODEL], tasks_tag="piqa:50,boolq:50;bfloat16")
        assert s.avg_accuracy(s.dense(MODEL)) == acc
        assert s.dense(MODEL).ppl("a") == 10.0  # perplexity is kept either way


def _baseline(docs: str = "piqa:50,boolq:50") -> RunRecord:
    return RunRecord("bl000001zzzz", {"study.kind": "baseline", "study.key": baseline_key(docs)},
                     {"piqa.chance": 0.5, "piqa.constant": 0.54, "boolq.chance": 0.5, "boolq.constant": 0.78,
                      "piqa.n": 50.0, "boolq.n": 50.0, "logged_at": 1.0})


@pytest.mark.unit
def test_accuracies_are_read_against_chance_and_the_best_constant_answer(study: Study, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from blockprune.study.figures import curve_figure

    tag = "piqa:50,boolq:50;bfloat16"  # the baseline's key leaves out the dtype: same documents
    runs = [RunRecord(r.run_id, r.tags | {"tasks_done": tag}, r.metrics) for r in _runs(study)]
    s = Study.from_runs([*runs, _baseline()], TASKS, CORPORA, [MODEL], tasks_tag=tag, docs_tag="piqa:50,boolq:50")
    assert s.baseline_accuracy("chance") == ({"piqa": 0.5, "boolq": 0.5}, 0.5)
    assert s.baseline_accuracy("constant")[1] == pytest.approx(0.66)
    # baselines of other documents (other limits) are not used
    other = Study.from_runs([*_runs(study), _baseline("piqa:10,boolq:10")], TASKS, CORPORA, [MODEL],
                            tasks_tag="piqa:50,boolq:50", docs_tag="piqa:50,boolq:50")
    assert other.baseline is None and other.baseline_accuracy("chance") == ({}, None)
    # pruned plans with accuracies: (3, 4) 0.60 (below the constant 0.66) and (1, 2) 0.70; chance + 0.05 = 0.55
    text = "\n".join(summary_section(s))
    assert "a random guess averages 0.500 and always giving the best answer position (in hindsight, per task) 0.660" \
        in text
    # dense piqa 0.8, boolq 0.6; constant 0.54, 0.78; 50 questions each:
    # SE dense √(0.8·0.2/50 + 0.6·0.4/50)/2 = 0.0447, constant √(0.54·0.46/50 + 0.78·0.22/50)/2 = 0.0458,
    # margin 0.040 / hypot(0.0447, 0.0458) = 0.62
    assert ("  - m: dense 0.700, +0.200 above chance; against the best constant answer: dense 0.700 ± 0.045 vs "
            "0.660 ± 0.046 (binomial standard errors of the average over the scored questions), +0.040 = 0.6 combined "
            "standard errors; of its 2 pruned plans with lm-eval results, 1 score no more "
            "than the best constant answer and 0 are within ±0.050 of chance.") in text
    assert "random guess" not in "\n".join(summary_section(study))  # no baseline run, no claim
    spec = parse_spec({"name": "t", "models": {MODEL: {"layer": [2]}},
                       "calibration": {"corpora": ["a", "b"], "seeds": [0, 1], "n_samples": 8, "seq_len": 64},
                       "methods": {"layer": ["shortgpt"]}, "evaluation": {"tasks": {"piqa": 50, "boolq": 50}}})
    page = render(s, spec, [], tmp_path, "figs", "cmd", {MODEL: 8})
    assert "| chance (random guess) | – | – | 0.500 | 0.500 | 0.500 | – | `bl000001` |" in page
    assert "| best constant answer | – | – | 0.540 | 0.780 | 0.660 | – | `bl000001` |" in page
    fig = curve_figure(s, MODEL, "layer", "acc")
    try:
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    finally:
        plt.close(fig)
    assert labels[-2:] == ["chance (random guess)", "best constant answer"]


@pytest.mark.unit
def test_spearman_closed_forms() -> None:
    from blockprune.study.tables import ranks, spearman

    assert ranks([3.0, 1.0, 2.0, 2.0]) == [4.0, 1.0, 2.5, 2.5]
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))  # no ties: 0.8
    assert spearman([1, 2, 3], [1, 1, 2]) == pytest.approx(1.5 / math.sqrt(3))  # tie-averaged ranks
    assert spearman([1, 2, 3], [9, 5, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 1, 1]) is None and spearman([1, 2], [2, 1]) is None
    with pytest.raises(ValueError):
        spearman([1, 2, 3], [1, 2])


@pytest.mark.unit
def test_perplexity_against_accuracy_over_every_measured_plan(study: Study, tmp_path: Path) -> None:
    from blockprune.study.claims import correlation_lines
    from blockprune.study.sections import correlation_section

    runs = [r for r in _runs(study) if r.key != plan_key(MODEL, "layer", (6, 7))]
    runs.append(_eval(5, plan_key(MODEL, "layer", (6, 7)), 30.0, 60.0, 0.5, 0.65))
    s = Study.from_runs(runs, TASKS, CORPORA, [MODEL])
    # ppl× 1.5 / 2.83 / 3.0 for plans (1,2) / (3,4) / (6,7); piqa 0.7 / 0.6 / 0.5; boolq 0.7 / 0.6 / 0.65
    assert [round(r, 2) for _, r in sorted(s.measured_plans(MODEL), key=lambda p: p[1])] == [1.5, 2.83, 3.0]
    rho = s.ppl_accuracy_correlation(MODEL)
    assert rho["piqa"] == pytest.approx(-1.0) and rho["avg"] == pytest.approx(-1.0)
    assert rho["boolq"] == pytest.approx(-0.5)
    # 3 plans: null standard error 1/sqrt(2) = 0.71; |ρ| < 1.41 for both tasks, so neither counts as following
    assert correlation_lines(s) == ["- *Does perplexity rank plans as average accuracy does?* Spearman ρ = -1.00 (m, 3 "
                                    "plans); tasks whose accuracy does not follow perplexity (|ρ| under two null "
                                    "standard errors): piqa, boolq (m)."]
    text = "\n".join(correlation_section(s, tmp_path, "figs"))
    assert "| accuracy | ρ m (3 plans, ±0.71) |" in text and "| boolq | -0.50 |" in text
    assert (tmp_path / "ppl-vs-accuracy.png").stat().st_size > 1000
    assert correlation_section(study, tmp_path, "figs") == []  # two measured plans: no correlation to give


@pytest.mark.unit
def test_which_plan_to_pick_for_a_perplexity_budget(study: Study) -> None:
    from blockprune.study.sections import budget_section

    # every plan has params_total 1e6 like the dense model: equal sizes, so the lowest ppl× within budget wins
    assert study.smallest_within(MODEL, 1.25) is None
    row, gran, kept = study.smallest_within(MODEL, 2.0)
    assert (row.method, gran, kept, row.ppl_ratio) == ("entrodrop/entropy.knn", "layer", 1.0, pytest.approx(1.5))
    # a plan that leaves fewer parameters wins a budget it fits, though its perplexity is higher
    runs = [r for r in _runs(study) if r.key != plan_key(MODEL, "layer", (3, 4))]
    small = _eval(2, plan_key(MODEL, "layer", (3, 4)), 20.0, 80.0, 0.6, 0.6)
    small.metrics["params_total"] = 5e5
    s = Study.from_runs([*runs, small], TASKS, CORPORA, [MODEL])
    row, gran, kept = s.smallest_within(MODEL, 4.0)
    assert (row.method, kept) == ("shortgpt", 0.5) and s.smallest_within(MODEL, 2.0)[0].method == \
        "entrodrop/entropy.knn"
    text = "\n".join(budget_section(s))
    assert "| ≤ 1.25× | no plan of the grid |" in text
    assert "| ≤ 4× | 2 layers by ShortGPT (BI): ppl× 2.83, 50.0% of the parameters, avg acc 0.600 (`ev000002`) |" \
        in text


@pytest.mark.unit
def test_time_lines_give_what_is_left_and_the_whole_grid_at_the_measured_rates() -> None:
    """2 of 4 calibrations run (1000 s capture + 1.5 s scoring each), 2 plans + dense, 10 s ppl and 20 s lm-eval
    per plan: the 2 calibrations left bring 1 new plan each, so the whole grid is 4 × 1001.5 + 5 × 30 s."""
    from blockprune.study.sections import time_lines

    def cal(i: int, corpus: str) -> RunRecord:
        return RunRecord(f"cal{i:05d}xxxx", {"study.kind": "calibration", "study.key": calibration_key(
            MODEL, corpus, 0, 8, 64), "model": MODEL, "corpus": corpus, "seed": "0"}, {"capture_seconds": 1000.0})

    def ev(i: int, key: str) -> RunRecord:
        r = _eval(i, key, 10.0, 20.0, 0.6, 0.6)
        return RunRecord(r.run_id, r.tags, r.metrics | {"ppl_seconds": 10.0, "lm_eval_seconds": 20.0})

    runs = [cal(1, "a"), cal(2, "b"), _sel(1, "a", 0, "shortgpt", None, 2, (3, 4)),
            _sel(2, "b", 0, "shortgpt", None, 2, (3, 5)), ev(1, plan_key(MODEL, "", None)),
            ev(2, plan_key(MODEL, "layer", (3, 4))), ev(3, plan_key(MODEL, "layer", (3, 5)))]
    spec = parse_spec({"name": "t", "models": {MODEL: {"layer": [2]}},
                       "calibration": {"corpora": ["a", "b"], "seeds": [0, 1], "n_samples": 8, "seq_len": 64},
                       "methods": {"layer": ["shortgpt"]}, "evaluation": {"tasks": {"piqa": 5, "boolq": 5}}})
    text = "\n".join(time_lines(Study.from_runs(runs, TASKS, CORPORA, [MODEL]), spec))
    left, whole = (2 * 1001.5 + 2 * 10 + 2 * 20) / 3600, (4 * 1001.5 + 5 * 30) / 3600
    assert f"| {MODEL} | 1,000 | 2 | 10.0 | 20 | 2 / 0 / 0 | {left:.1f} | {whole:.1f} |" in text
    assert f"the whole grid takes ≈ {whole:.1f} h" in text


@pytest.mark.unit
def test_claims_over_all_calibrations_judge_each_method_by_every_plan() -> None:
    """Two calibrations. ShortGPT's plans: ppl× 2.83 and 2.83, acc 0.6 and 0.5; EntroDrop's 1.5 and 3 (geomean
    2.12), acc 0.7 and 0.4 (mean 0.55, a tie); MI-PRUN's 1.5 and 2.83 (2.06), acc 0.7 and 0.6 (+0.10 > ±0.05)."""
    from blockprune.study.claims import all_calibration_claims, count_claims

    runs = [
        _sel(1, "a", 0, "shortgpt", None, 2, (3, 4)), _sel(2, "b", 0, "shortgpt", None, 2, (3, 5)),
        _sel(3, "a", 0, "entrodrop", "entropy.knn", 2, (1, 2)), _sel(4, "b", 0, "entrodrop", "entropy.knn", 2, (6, 7)),
        _sel(5, "a", 0, "mi_fbs", "mi.ksg", 2, (1, 2)), _sel(6, "b", 0, "mi_fbs", "mi.ksg", 2, (3, 4)),
        _eval(1, plan_key(MODEL, "", None), 10.0, 20.0, 0.8, 0.6),
        _eval(2, plan_key(MODEL, "layer", (3, 4)), 20.0, 80.0, 0.6, 0.6),
        _eval(3, plan_key(MODEL, "layer", (3, 5)), 40.0, 40.0, 0.5, 0.5),
        _eval(4, plan_key(MODEL, "layer", (1, 2)), 15.0, 30.0, 0.7, 0.7),
        _eval(5, plan_key(MODEL, "layer", (6, 7)), 30.0, 60.0, 0.4, 0.4),
    ]
    s = Study.from_runs(runs, TASKS, CORPORA, [MODEL])
    noise = s.accuracy_noise()
    assert noise is not None and noise[1] == pytest.approx(0.05)  # √(2 × 0.25/50) / 2
    assert not count_claims(s).authors
    (line,) = all_calibration_claims([s.rows(MODEL, "layer", 2)], noise[1], authors=False)
    assert "over all 2 calibrations" in line
    assert "EntroDrop beats ShortGPT in 1 of 1 cells by perplexity and 0 by average accuracy (0 beyond ±0.050)" in line
    assert "MI-PRUN beats ShortGPT in 1 of 1 cells by perplexity and 1 by average accuracy (1 beyond ±0.050)" in line
    assert "MI-PRUN beats EntroDrop in 1 of 1 cells by perplexity" in line
    # one calibration's plan without lm-eval: that method is not judged on a partial mean, and the cell drops out
    partial = Study.from_runs([*runs[:-1], _eval(5, plan_key(MODEL, "layer", (6, 7)), 30.0, 60.0)], TASKS, CORPORA,
                              [MODEL])
    (line,) = all_calibration_claims([partial.rows(MODEL, "layer", 2)], 0.05, authors=False)
    assert "EntroDrop" not in line.split(": ", 1)[1] and "MI-PRUN beats ShortGPT in 1 of 1" in line
    # EntroDrop as its authors ran it (default estimator) chose (3, 5) on both: no better than ShortGPT, while
    # the variant above wins; once the study has such rows, the claim is judged on them, not the best variant
    ref = Study.from_runs([*runs, _sel(7, "a", 0, "entrodrop", "entropy.knn_window", 2, (3, 5)),
                           _sel(8, "b", 0, "entrodrop", "entropy.knn_window", 2, (3, 5))], TASKS, CORPORA, [MODEL])
    assert count_claims(ref).authors
    (line,) = all_calibration_claims([ref.rows(MODEL, "layer", 2)], 0.05, authors=True)
    assert "each method as its authors ran it" in line
    assert "EntroDrop beats ShortGPT in 0 of 1 cells by perplexity and 0 by average accuracy" in line


@pytest.mark.unit
def test_report_names_and_families_come_from_the_method_specs() -> None:
    """A method registered with a label and a family is named and grouped by the report with no other edit."""
    from blockprune.selection.methods import METHODS, MethodSpec
    from blockprune.study.tables import display, family

    METHODS.register("throwaway", MethodSpec("throwaway", "block", "highest", "mi", fn=lambda *a, **k: None,
                                             estimator_kind="mi", default_estimator="mi.ksg", label="Throwaway",
                                             family="mi"))
    try:
        assert display("throwaway/mi.ksg") == "Throwaway"  # its default estimator goes unsaid
        assert display("throwaway/mi.gaussian") == "Throwaway · Gaussian"
        assert display("throwaway/mi.ksg[proj=none,standardize=none]") == "Throwaway · raw scale"
        assert display("throwaway/mi.ksg[k=3]") == "throwaway/mi.ksg[k=3]"  # an unnamed variant keeps its id
        assert family("throwaway/mi.ksg[k=3]") == "mi"
    finally:
        METHODS.unregister("throwaway")
    assert display("throwaway/mi.ksg") == "throwaway/mi.ksg" and family("throwaway") == "base"
    # EntroDrop's spec shows its estimator even when it is the default: the report compares them
    assert display("entrodrop/entropy.bucket") == "EntroDrop · bucket" and family("entrodrop/entropy.knn") == "entrodrop"
    assert display("shortgpt") == "ShortGPT (BI)" and family("shortgpt") == "base"


def test_spec_names_variants_and_links_other_reports(study: Study, tmp_path: Path) -> None:
    """A spec's display names replace the registry's labels; ``see_also`` adds a header line linking the other
    reports (relative to the report); a spec without either renders as before (no line, registry labels)."""
    d = {"name": "t", "models": {MODEL: {"layer": [2]}},
         "calibration": {"pairs": [["a", 0], ["b", 0], ["a", 1]], "n_samples": 8, "seq_len": 64},
         "methods": {"layer": ["shortgpt", {"method": "entrodrop", "estimator": "entropy.knn", "stage_rule": "curve",
                                            "display": "EntroDrop · KNN pooled (curve)"}, "mi_fbs/mi.ksg",
                               "mi_brute/mi.ksg"]},
         "evaluation": {"tasks": {"piqa": 5, "boolq": 5}}}
    plain = render(study, parse_spec(d | {"methods": {"layer": ["shortgpt", "entrodrop/entropy.knn"]}}), [], tmp_path,
                   "figs", "cmd", {MODEL: 8}, tmp_path / "docs" / "RESULTS-x.md")
    assert "See also" not in plain and "| EntroDrop · KNN | 1 2 |" in plain
    spec = parse_spec(d | {"see_also": ["docs/RESULTS.md"], "quick": True})
    named = Study.from_runs(_runs(study), TASKS, CORPORA, [MODEL], names=spec.display_names)
    page = render(named, spec, [], tmp_path, "figs", "cmd", {MODEL: 8}, Path("docs") / "RESULTS-x.md")
    assert "See also: [docs/RESULTS.md](RESULTS.md)." in page
    assert "The full study is in docs/RESULTS.md." in page
    assert "| EntroDrop · KNN pooled (curve) | 1 2 |" in page and "EntroDrop · KNN |" not in page
    assert "lowest perplexity: EntroDrop · KNN pooled (curve) (ppl× 1.50)" in page
    assert "tokens of `a` seed 0, `b` seed 0, `a` seed 1 (3 calibrations per model; the *reference* calibration " \
           "is `a` seed 0)" in page
    assert "> **Partial results.** 8 of 12 selections" in page


def test_exact_scores_per_mi_estimator_when_there_are_two(study: Study, tmp_path: Path) -> None:
    from blockprune.study.sections import cost_section

    spec = parse_spec({"name": "t", "models": {MODEL: {"layer": [2]}}, "methods": {"layer": ["shortgpt"]}})
    one = "\n".join(cost_section(study, spec))
    assert "| model | n_prune | greedy | FBS | brute force | FBS = brute? |" in one
    # per estimator: every selection took 1.5 s; KSG's two (FBS, brute force) share calibration a/0 → 3.0 s there,
    # the most expensive first; ShortGPT's BI one selection on each of 3 calibrations
    lines = one.splitlines()
    ksg, bi = lines.index("| m | KSG | 2 | 3.0 | 3.0 | 1 |"), lines.index("| m | ShortGPT (BI) | 1 | 1.5 | 1.5 | 3 |")
    assert ksg < bi
    assert "| m | 2 | – | 11.0 | 17.0 | 1/1 |" in one
    from dataclasses import replace

    perdim = Study.from_runs([_sel(20, "a", 0, "mi_fbs", "mi.perdim", 2, (5, 6), exact=7),
                              _sel(21, "a", 0, "mi_brute", "mi.perdim", 2, (5, 6), exact=9)], TASKS, CORPORA, [MODEL])
    two = "\n".join(cost_section(replace(study, selections=study.selections + perdim.selections), spec))
    assert "| model | n_prune | estimator | greedy | FBS | brute force | FBS = brute? |" in two
    assert "| m | 2 | KSG | – | 11.0 | 17.0 | 1/1 |" in two
    assert "| m | 2 | per-coordinate KSG | – | 7.0 | 9.0 | 1/1 |" in two
    # FBS without a brute-force run on the same calibration: nothing to compare, not "0 of 1"
    fbs_only = Study.from_runs([_sel(22, "a", 0, "mi_fbs", "mi.perdim", 2, (5, 6), exact=7)], TASKS, CORPORA,
                               [MODEL])
    three = "\n".join(cost_section(replace(study, selections=study.selections + fbs_only.selections), spec))
    assert "| m | 2 | per-coordinate KSG | – | 7.0 | – | – |" in three


def test_readings_paragraph_names_the_papers_rows_and_the_variants(study: Study) -> None:
    from blockprune.study.report import readings_text

    both = parse_spec({"name": "t", "models": {MODEL: {"layer": [2]}},
                       "methods": {"layer": ["shortgpt", "entrodrop", "mi_fbs",
                                             {"method": "entrodrop", "estimator": "entropy.knn",
                                              "stage_rule": "curve", "display": "EntroDrop · KNN pooled (curve)"},
                                             "mi_fbs/mi.ksg"]}})
    (text, _) = readings_text(study, both)
    authors, variants = text.split("Labelled variants")
    assert "EntroDrop · KNN per window" in authors and "MI-PRUN FBS" in authors and "ShortGPT" not in text
    assert "EntroDrop · KNN pooled (curve)" in variants and "MI-PRUN FBS · KSG" in variants
    only_variants = parse_spec({"name": "t", "models": {MODEL: {"layer": [2]}},
                                "methods": {"layer": ["shortgpt", "mi_fbs/mi.ksg"]}})
    assert readings_text(study, only_variants) == []  # nothing to tell apart: no paragraph


def test_rows_follow_the_spec_order_not_the_run_order() -> None:
    """A method added to a finished study was run last; its rows sit where the spec lists it. A method the spec
    lists for both granularities keeps its first place."""
    runs = [_sel(1, "a", 0, "shortgpt", None, 2, (3, 4)), _sel(2, "a", 0, "mi_fbs", "mi.ksg", 2, (1, 2)),
            _sel(3, "a", 0, "entrodrop", "entropy.knn_window", 2, (6, 7))]
    order = ["shortgpt", "entrodrop/entropy.knn_window", "mi_fbs/mi.ksg", "shortgpt"]
    assert Study.from_runs(runs, TASKS, CORPORA, [MODEL], order=order).methods(MODEL, "layer") == [
        "shortgpt", "entrodrop/entropy.knn_window", "mi_fbs/mi.ksg"]
    assert Study.from_runs(runs, TASKS, CORPORA, [MODEL]).methods(MODEL, "layer") == [
        "shortgpt", "mi_fbs/mi.ksg", "entrodrop/entropy.knn_window"]
