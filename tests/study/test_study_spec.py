"""Study specs: the shipped ones load and validate; bad ones fail with a clear message before any model runs."""

from __future__ import annotations

from typing import Any

import pytest

from blockprune.study.spec import StudySpecError, default_spec_path, load_spec, parse_spec, validate


def _spec(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"models": {"smollm2-135m": {"layer": [2]}}, "methods": {"layer": ["shortgpt"]},
                         "calibration": {"corpora": ["wikipedia"], "seeds": [0], "n_samples": 4, "seq_len": 64}}
    d.update(over)
    return d


def test_shipped_specs_cover_the_issue_grid() -> None:
    full, quick = load_spec(default_spec_path(False)), load_spec(default_spec_path(True))
    assert not full.quick and quick.quick and full.fingerprint != quick.fingerprint
    grids = {m.name: (m.layer, m.attention) for m in full.models}
    assert grids == {"smollm2-135m": ((2, 4, 6, 8), (4, 8, 12)), "gemma3-270m": ((2, 3, 4, 5), (3, 6, 9))}
    assert full.corpora == ("wikipedia", "lambada", "lee-news") and full.seeds == (0, 1)
    assert (full.n_samples, full.seq_len) == (128, 256)
    layer = {m.label for m in full.layer_methods}
    assert {"shortgpt", "sequential", "reverse", "relative_magnitude", "angular", "entrodrop/entropy.knn_window",
            "mi_greedy/mi.perdim", "mi_fbs/mi.perdim", "mi_brute/mi.perdim", "entrodrop/entropy.bucket",
            "entrodrop/entropy.knn", "entrodrop/entropy.renyi", "mi_greedy/mi.ksg", "mi_fbs/mi.ksg",
            "mi_brute/mi.ksg", "mi_greedy/mi.ksg[proj=none,standardize=none]",
            "mi_fbs/mi.ksg[proj=none,standardize=none]", "mi_brute/mi.ksg[proj=none,standardize=none]"} == layer
    assert {"shortgpt", "entrodrop/entropy.knn_window", "entrodrop/entropy.bucket", "entrodrop/entropy.knn",
            "entrodrop/entropy.renyi"} == {m.label for m in full.attention_methods}
    assert full.display_names["entrodrop/entropy.renyi"] == "EntroDrop · Rényi pooled (curve)"
    assert full.evaluation.replay_dense_prefix
    assert {t for t, _ in full.evaluation.tasks} == {"piqa", "winogrande", "arc_easy", "arc_challenge", "hellaswag",
                                                     "boolq", "openbookqa", "commonsense_qa", "mmlu"}
    assert full.calibrations()[0].corpus == "wikipedia" and full.calibrations()[0].seed == 0
    assert len(full.trials(full.models[0])) == 18 * 4 + 5 * 3


def test_lm_eval_dtype_redoes_lm_eval_only() -> None:
    """The dtype of lm-eval is in the tasks_done tag, not the fingerprint: perplexity and selections stay."""
    base = parse_spec(_spec(evaluation={"tasks": {"piqa": 10}}))
    bf16 = parse_spec(_spec(evaluation={"tasks": {"piqa": 10}, "lm_eval_dtype": "bfloat16"}))
    assert base.evaluation.lm_eval_dtype == "float32" and bf16.evaluation.lm_eval_dtype == "bfloat16"
    assert base.fingerprint == bf16.fingerprint
    assert base.evaluation.tasks_tag == "piqa:10" and bf16.evaluation.tasks_tag == "piqa:10;bfloat16"
    assert base.fingerprint != parse_spec(_spec(evaluation={"tasks": {"piqa": 10}, "windows": 4})).fingerprint


def test_validate_reports_depths() -> None:
    assert validate(load_spec(default_spec_path(True))) == {"smollm2-135m": 30, "gemma3-270m": 18}


@pytest.mark.parametrize(("over", "match"), [
    ({"colour": 1}, "unknown key"),
    ({"models": {}}, "no models"),
    ({"models": {"smollm2-135m": {}}}, "needs 'layer'"),
    ({"models": {"smollm2-135m": {"layer": ["two"]}}}, "list of integers"),
    ({"evaluation": {"tasks": {"piqa": 0}}}, "positive integer"),
    ({"evaluation": {"lm_eval_scope": "some"}}, "lm_eval_scope"),
    ({"evaluation": {"lm_eval_dtype": "int8"}}, "lm_eval_dtype"),
    ({"capture": {"store_dtype": "int8"}}, "store_dtype"),
    ({"methods": {"layers": ["shortgpt"]}}, "unknown key"),
])
def test_parse_errors(over: dict[str, Any], match: str) -> None:
    with pytest.raises(StudySpecError, match=match):
        parse_spec(_spec(**over))


@pytest.mark.parametrize(("over", "match"), [
    ({"models": {"smollm2-135m": {"layer": [30]}}}, "between 1 and 29"),
    ({"methods": {"layer": ["shortgun"]}}, "shortgun"),
    ({"methods": {"layer": ["entrodrop/mi.ksg"]}}, "entropy estimator"),
    ({"methods": {"attention": ["mi_fbs/mi.ksg"]}, "models": {"smollm2-135m": {"attention": [2]}}}, "whole layers"),
    ({"calibration": {"corpora": ["no-such-corpus"]}}, "no-such-corpus"),
    ({"evaluation": {"tasks": ["piqa", "no_such_task"]}}, "no_such_task"),
    ({"models": {"no-such-model": {"layer": [2]}}}, "no-such-model"),
])
def test_validate_errors_before_any_model_work(over: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, KeyError, OSError), match=match):
        validate(parse_spec(_spec(**over)))


def test_qwen_specs_reference_modes_variants_and_healing() -> None:
    full, quick = load_spec(default_spec_path(False, qwen=True)), load_spec(default_spec_path(True, qwen=True))
    assert not full.quick and quick.quick and full.experiment != quick.experiment
    assert [m.name for m in full.models] == ["qwen2.5-coder-1.5b"]
    assert (full.models[0].layer, full.models[0].attention) == ((2, 4, 6, 8), (4, 8, 12))
    assert [(c.corpus, c.seed) for c in full.calibrations()] == [("wikipedia", 0), ("wikipedia", 1), ("lambada", 0)]
    layer = [m.label for m in full.layer_methods]
    # the references are the methods' defaults; the pooled / multivariate readings are named variants
    assert {"entrodrop/entropy.knn_window", "entrodrop/entropy.knn", "mi_fbs/mi.perdim", "mi_fbs/mi.ksg",
            "mi_brute/mi.perdim", "mi_greedy/mi.ksg", "sequential", "reverse"} <= set(layer)
    assert full.display_names["entrodrop/entropy.knn"] == "EntroDrop · KNN pooled (curve)"
    assert next(m for m in full.layer_methods if m.label == "entrodrop/entropy.knn").stage_rule == "curve"
    tasks = dict(full.evaluation.tasks)
    # the average accuracy's standard error at p = 0.5 (mmlu's limit is per subject: 57 subjects)
    n = [lim * (57 if t == "mmlu" else 1) for t, lim in tasks.items()]
    assert (sum(0.25 / k for k in n)) ** 0.5 / len(n) <= 0.02
    assert full.evaluation.lm_eval_scope == "reference"
    assert full.heal is not None and full.heal.n_prune == (6, 8) and full.heal.granularity == "layer"
    assert full.report == "docs/RESULTS-qwen.md" and "docs/RESULTS.md" in full.see_also
    assert quick.report == "docs/RESULTS-qwen-quick.md" and quick.see_also[0] == "docs/RESULTS-qwen.md"
    small = load_spec(default_spec_path(False))  # the small study links both ways, and keeps its default path
    assert small.see_also == ("docs/RESULTS-quick.md", "docs/RESULTS-qwen.md") and small.report is None
    # each Qwen report sets itself against its small twin ("Compared with")
    assert full.compare_with == ("docs/RESULTS.md", "blockprune/jobs/configs/study.yaml")
    assert quick.compare_with == ("docs/RESULTS-quick.md", "blockprune/jobs/configs/study-quick.yaml")


@pytest.mark.slow
def test_qwen_specs_validate() -> None:
    """Loads the Qwen configs and tokenizers (converts the bundled models on a fresh machine: minutes)."""
    assert validate(load_spec(default_spec_path(True, qwen=True))) == {"qwen2.5-coder-0.5b": 24}
    assert validate(load_spec(default_spec_path(False, qwen=True))) == {"qwen2.5-coder-1.5b": 28}


@pytest.mark.parametrize(("over", "match"), [
    ({"calibration": {"pairs": [["wikipedia", 0]], "seeds": [0]}}, "either pairs"),
    ({"calibration": {"pairs": [["wikipedia", "0"]]}}, r"\[corpus, seed\] pairs"),
    ({"calibration": {"pairs": [["wikipedia", 0], ["wikipedia", 0]]}}, "twice"),
    ({"methods": {"layer": [{"method": "shortgpt", "display": ""}]}}, "non-empty"),
    ({"see_also": [3]}, "list of paths"),
])
def test_parse_errors_of_the_report_keys(over: dict[str, Any], match: str) -> None:
    with pytest.raises(StudySpecError, match=match):
        parse_spec(_spec(**over))


@pytest.mark.parametrize(("methods", "match"), [
    ([{"method": "entrodrop", "estimator": "entropy.knn", "stage_rule": "curve"},
      {"method": "entrodrop", "estimator": "entropy.knn", "stage_rule": "fixed"}], "twice"),
    ([{"method": "shortgpt", "display": "X"}, {"method": "angular", "display": "X"}], "given to shortgpt and angular"),
    ([{"method": "entrodrop", "stage_rule": "curve"}], "would read as entrodrop as its authors ran it"),
])
def test_rows_the_report_could_not_tell_apart_are_refused(methods: list[Any], match: str) -> None:
    with pytest.raises(StudySpecError, match=match):
        validate(parse_spec(_spec(methods={"layer": methods})))


def test_heal_block_counts_must_be_in_the_grid() -> None:
    with pytest.raises(StudySpecError, match=r"heal.n_prune \[4\]"):
        validate(parse_spec(_spec(heal={"n_prune": [4]})))


def test_cli_qwen_selects_the_spec_and_its_report(capsys: pytest.CaptureFixture) -> None:
    from blockprune.jobs.study import default_out, main

    assert main(["--qwen", "--spec", "x.yaml"]) == 2
    assert "either --qwen or --spec" in capsys.readouterr().err
    assert str(default_out(load_spec(default_spec_path(False, qwen=True)))) == "docs/RESULTS-qwen.md"
    assert str(default_out(load_spec(default_spec_path(True, qwen=True)))) == "docs/RESULTS-qwen-quick.md"
    assert str(default_out(load_spec(default_spec_path(True)))) == "docs/RESULTS-quick.md"
    assert str(default_out(load_spec(default_spec_path(False)))) == "docs/RESULTS.md"
