"""The ``!function`` hooks the bundled task YAMLs call, per document, inside lm-eval.

They mirror the utils of lm-eval's stock tasks (Winogrande's partial scoring, HellaSwag's cleanup, COPA's
connectives, CB's macro F1), so the local tasks score exactly as the hub ones. lm-eval imports ``!function``
modules by file path relative to the YAML, so :func:`~blockprune.evaluation.lm_eval_tasks.local_task_dir`
writes a two-line shim beside the YAMLs that re-exports :data:`HOOKS` from here. Kept apart from the task
resolution and the runner: these are the task definitions' code, small pure functions of one document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any


def winogrande_doc_to_text(doc: Mapping[str, Any]) -> int:
    """Gold option index; an int tells lm-eval that the *contexts* differ per choice (partial scoring)."""
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_doc_to_target(doc: Mapping[str, Any]) -> str:
    """The sentence after the blank: the continuation scored under each filled-in context."""
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc: Mapping[str, Any]) -> list[str]:
    """The sentence up to the blank, filled with each option."""
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: WikiHow ``[title]`` markers and bracketed artefacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    return {
        "query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
        "choices": [hellaswag_preprocess(e) for e in doc["endings"]],
        "gold": int(doc["label"]),
    }


def hellaswag_process_docs(dataset: Any) -> Any:
    """Adds ``query``, ``choices`` and ``gold`` to every HellaSwag document (a datasets.Dataset)."""
    return dataset.map(_hellaswag_doc)


def _copa_lower_first(choice: str) -> str:
    return choice[0].lower() + choice[1:]


def copa_doc_to_text(doc: Mapping[str, Any]) -> str:
    """Premise without its full stop, joined by the connective of the question type."""
    connector = {"cause": "because", "effect": "therefore"}[doc["question"]]
    return doc["premise"].strip()[:-1] + f" {connector}"


def copa_doc_to_target(doc: Mapping[str, Any]) -> str:
    correct = doc["choice1"] if doc["label"] == 0 else doc["choice2"]
    return " " + _copa_lower_first(correct)


def copa_doc_to_choice(doc: Mapping[str, Any]) -> list[str]:
    return [" " + _copa_lower_first(doc["choice1"]), " " + _copa_lower_first(doc["choice2"])]


def macro_f1(items: Iterable[tuple[int, int]]) -> float:
    """Unweighted mean of per-class F1 over (pred, gold) pairs (CB's f1; numpy-free, no sklearn)."""
    pairs = list(items)
    classes = sorted({g for _, g in pairs} | {p for p, _ in pairs})
    f1s = []
    for c in classes:
        tp = sum(1 for p, g in pairs if p == c and g == c)
        fp = sum(1 for p, g in pairs if p == c and g != c)
        fn = sum(1 for p, g in pairs if p != c and g == c)
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else float("nan")


HOOKS: tuple[str, ...] = (  # what the generated shim re-exports
    "winogrande_doc_to_text",
    "winogrande_doc_to_target",
    "winogrande_doc_to_choice",
    "hellaswag_process_docs",
    "copa_doc_to_text",
    "copa_doc_to_target",
    "copa_doc_to_choice",
    "macro_f1",
)
