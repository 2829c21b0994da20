"""Chunk perplexity vs an independent computation, and lm-eval-style rolling perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from blockprune.calibration.corpora import load_corpus
from blockprune.calibration.windows import heldout_windows, split_documents
from blockprune.evaluation.perplexity import chunk_perplexity, rolling_perplexity

pytestmark = pytest.mark.integration


def test_chunk_perplexity_matches_cross_entropy(smollm2) -> None:
    model, tok = smollm2
    w = heldout_windows(tok, load_corpus("lee-news"), 64, max_windows=3)
    res = chunk_perplexity(model, w, batch_size=2, progress=False)
    ids = torch.from_numpy(w.input_ids)
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert res.perplexity == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert res.n_tokens == 3 * 63 and res.kind == "chunk"


def test_rolling_perplexity_word_and_byte(smollm2) -> None:
    model, tok = smollm2
    _, held = split_documents(load_corpus("lee-news"))
    docs = held[:3]
    res = rolling_perplexity(model, tok, docs, max_length=128)
    assert res.n_words == sum(len(d.split()) for d in docs)
    # the three metrics are one log-likelihood seen per word and per byte
    ll = -math.log(res.word_perplexity) * res.n_words
    assert -math.log(res.byte_perplexity) * res.n_bytes == pytest.approx(ll, rel=1e-9)
    assert res.bits_per_byte == pytest.approx(math.log2(res.byte_perplexity), rel=1e-9)
    assert 1 < res.byte_perplexity < 4 and res.word_perplexity > 10
    # longer context helps: a 128-token window cannot beat a 512-token one by much, usually loses
    longer = rolling_perplexity(model, tok, docs, max_length=512)
    assert np.isfinite(longer.word_perplexity) and longer.word_perplexity < res.word_perplexity * 1.05
