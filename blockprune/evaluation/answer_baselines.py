"""What a multiple-choice score is worth without a model: chance and the best constant answer.

Why: a 135M-parameter model scores close to chance on most of the lm-eval suite, and a limited run takes
the first N documents of a task, whose answers need not be balanced (the first 50 BoolQ questions are
78% "yes"). An accuracy means little until it is set against these two numbers, computed here from the
very documents lm-eval scores (same tasks, same ``limit``), with no model:

* ``chance``: expected accuracy of a uniform random guess, the mean over documents of 1 / #choices;
* ``constant``: accuracy of always giving the same answer position, the best position in hindsight
  (an upper bound for a model that ignores the question; for BoolQ, "always yes" or "always no").

Both hold for ``acc`` and ``acc_norm`` alike: neither depends on the likelihoods. Groups (MMLU) pool their
subjects' documents, as lm-eval's size-weighted group accuracy does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from blockprune.evaluation.lm_eval_tasks import load_leaf_tasks, resolve_task_names


def gold_index(task: Any, doc: Any) -> int | list[int]:
    """The correct choice(s) of a document, read the way lm-eval's multiple-choice scoring reads them."""
    gold = task.doc_to_text(doc) if getattr(task, "multiple_input", 0) else task.doc_to_target(doc)
    choices = task.doc_to_choice(doc)
    if isinstance(gold, str):
        return choices.index(gold) if gold in choices else -1
    return [int(g) for g in gold] if isinstance(gold, list) else int(gold)


def baselines_of_docs(docs: Sequence[tuple[int, int | list[int]]]) -> dict[str, float]:
    """``docs``: (number of choices, gold index or indices) per document."""
    if not docs:
        raise ValueError("no documents to compute a baseline from")
    chance = sum(min(len(g) if isinstance(g, list) else 1, k) / k for k, g in docs) / len(docs)
    hits: Counter[int] = Counter()
    for k, g in docs:
        for pos in set(g if isinstance(g, list) else [g]):
            if 0 <= pos < k:
                hits[pos] += 1
    constant = max(hits.values(), default=0) / len(docs)
    return {"chance": chance, "constant": constant, "n": float(len(docs))}


def answer_baselines(tasks: Sequence[str], limit: int | None = None) -> dict[str, dict[str, float]]:
    """``{requested task: {"chance", "constant", "n"}}`` over the first ``limit`` documents of each task
    (per subject for MMLU groups, as :func:`~blockprune.evaluation.lm_eval_tasks.run_lm_eval` scores them).
    Unknown names raise :class:`~blockprune.evaluation.lm_eval_tasks.UnknownTaskError`."""

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    out: dict[str, dict[str, float]] = {}
    for requested, local in resolve_task_names(tasks).items():
        docs: list[tuple[int, int | list[int]]] = []
        for task in load_leaf_tasks([local]).values():
            if getattr(task, "OUTPUT_TYPE", "multiple_choice") != "multiple_choice":
                raise ValueError(f"task {requested!r} is not multiple choice: it has no answer-free baseline")
            for _, doc in task.doc_iterator(limit=limit):
                docs.append((len(task.doc_to_choice(doc)), gold_index(task, doc)))
        out[requested] = baselines_of_docs(docs)
    return out
