"""Bundled and local corpora, token windows and the held-out split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blockprune.calibration.corpora import Corpus, known_corpora, load_corpus
from blockprune.calibration.windows import (
    CorpusTooShortError,
    calibration_windows,
    heldout_windows,
    split_documents,
    token_stream,
)


@pytest.fixture(scope="module")
def tokenizer():
    from blockprune.models.zoo import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model("smollm2-135m"))


@pytest.mark.parametrize(("name", "min_docs", "min_chars"),
                         [("wikipedia", 90, 2_500_000), ("lee-news", 250, 300_000), ("lambada", 5000, 1_500_000)])
def test_bundled_corpora_are_real_text(name: str, min_docs: int, min_chars: int) -> None:
    c = load_corpus(name)
    assert len(c.documents) >= min_docs and c.n_chars >= min_chars
    text = " ".join(c.documents[:20])
    assert "'''" not in text and "[[" not in text  # wiki markup filtered
    assert sum(ch.isalpha() for ch in text) / len(text) > 0.7


def test_unknown_corpus_lists_known() -> None:
    with pytest.raises(ValueError, match="wikipedia.*") as e:
        load_corpus("no-such-corpus")
    assert "lee-news" in str(e.value) and "lambada" in str(e.value)


def test_hub_corpus_offline_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="offline"):
        load_corpus("c4")
    assert "c4" in known_corpora()


def test_local_text_and_jsonl(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("first paragraph here.\n\nsecond one.\n\n\nthird.")
    assert load_corpus(str(tmp_path / "a.txt")).documents == ("first paragraph here.", "second one.", "third.")
    rows = [{"text": "alpha"}, {"instruction": "Do x", "input": "", "output": "done"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert load_corpus(str(tmp_path / "b.jsonl")).documents == ("alpha", "Do x\ndone")
    (tmp_path / "c.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(ValueError, match="text-field"):
        load_corpus(str(tmp_path / "c.jsonl"))
    assert load_corpus(str(tmp_path / "c.jsonl"), text_field="body").documents == ("x",)


def test_windows_bos_first_seeded_and_disjoint_from_heldout(tokenizer) -> None:
    corpus = load_corpus("lee-news")
    w = calibration_windows(tokenizer, corpus, 16, 128, seed=1)
    assert w.input_ids.shape == (16, 128) and np.all(w.input_ids[:, 0] == tokenizer.bos_token_id)
    assert np.array_equal(w.input_ids, calibration_windows(tokenizer, corpus, 16, 128, seed=1).input_ids)
    assert not np.array_equal(w.input_ids, calibration_windows(tokenizer, corpus, 16, 128, seed=2).input_ids)
    assert len(set(w.starts.tolist())) == 16 and np.all(np.diff(w.starts) >= 127)  # non-overlapping
    calib, held = split_documents(corpus)
    assert not set(calib) & set(held) and len(calib) + len(held) == len(set(corpus.documents))
    assert len(set(corpus.documents)) < len(corpus.documents)  # the Lee corpus does hold duplicates
    h = heldout_windows(tokenizer, corpus, 128, max_windows=5)
    assert h.input_ids.shape == (5, 128) and np.all(h.input_ids[:, 0] == tokenizer.bos_token_id)
    # held-out windows are consecutive chunks of the held-out stream
    stream = token_stream(tokenizer, held)
    assert np.array_equal(h.input_ids[1, 1:], stream[127:254])


def test_corpus_too_short_is_reported_before_any_forward(tokenizer) -> None:
    tiny = Corpus("tiny", tuple(f"document {i}: one two three four five six seven" for i in range(3)), "test")
    with pytest.raises(CorpusTooShortError, match=r"fewer than the 4 × 64"):
        calibration_windows(tokenizer, tiny, 4, 64)


def test_binary_garbage_txt_is_refused_naming_the_file(tmp_path) -> None:
    """Before: read with errors='replace' and calibrated on."""
    from blockprune.errors import BadInputError

    f = tmp_path / "garbage.txt"
    f.write_bytes(np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes())
    with pytest.raises(BadInputError, match="does not look like text") as e:
        load_corpus(str(f))
    assert str(f) in str(e.value)


@pytest.mark.parametrize("text", [
    "Plain English prose.\n\nA second paragraph, with tabs\tand numbers 1.5e3.",
    "Übersetzung, naïve café, 東京は日本の首都です。 Москва — столица России. مرحبا بالعالم",
    "emoji 🙂 and a zero\u200bwidth space, a soft\u00adhyphen, \u201cquotes\u201d",
])
def test_real_text_in_any_script_is_accepted(tmp_path, text: str) -> None:
    f = tmp_path / "ok.txt"
    f.write_text(text * 50, encoding="utf-8")
    assert load_corpus(str(f)).n_chars > 0


def test_jsonl_problems_name_the_file_and_line(tmp_path) -> None:
    from blockprune.errors import BadInputError

    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(BadInputError, match="not UTF-8 text.*line 2") as e:
        load_corpus(str(latin))
    assert str(latin) in str(e.value)
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"text": "a"}\n{"text": "b')
    with pytest.raises(BadInputError, match="line 2: not valid JSON") as e:
        load_corpus(str(cut))
    assert str(cut) in str(e.value)
    arr = tmp_path / "list.jsonl"
    arr.write_text('["a", "b"]\n')
    with pytest.raises(BadInputError, match="line 1: a JSON object is needed"):
        load_corpus(str(arr))
