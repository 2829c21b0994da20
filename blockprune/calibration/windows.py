"""Token windows: seeded calibration samples and a disjoint held-out split.

Documents are split once, by a fixed rule independent of the seed, into calibration and held-out
sets, so evaluation text never overlaps calibration text and stays the same across seeds. The
calibration windows are ``n_samples`` non-overlapping slices of the concatenated calibration
stream, chosen with the seed; every window (calibration and held-out) starts with BOS, as the
pruning papers evaluate and as Gemma needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from blockprune.calibration.corpora import Corpus
from blockprune.errors import BadInputError

HELDOUT_EVERY = 10  # every 10th document (by position) is held out


class CorpusTooShortError(BadInputError):
    """The corpus cannot supply the requested number of tokens."""


@dataclass(frozen=True)
class TokenWindows:
    """``input_ids`` shaped (n_windows, seq_len), BOS in column 0 when the tokenizer has one."""

    input_ids: np.ndarray
    starts: np.ndarray  # offset of each window in the token stream it was cut from
    has_bos: bool

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.size)


def distinct_documents(corpus: Corpus) -> list[str]:
    """The corpus's documents with exact duplicates dropped (first occurrence kept); the ids that
    :func:`split_document_ids` returns index this list."""
    return list(dict.fromkeys(corpus.documents))


def split_document_ids(corpus: Corpus) -> tuple[list[int], list[int]]:
    """(calibration, held-out) ids into :func:`distinct_documents`; held-out = every 10th, at least one.

    Exact duplicates are dropped first (the Lee corpus has some): a duplicate on both sides would
    leak held-out text into calibration (or into healing's training windows, which use the same split).
    """
    n = len(distinct_documents(corpus))
    if n < 2:
        raise CorpusTooShortError(f"corpus {corpus.name!r} needs at least 2 distinct documents to hold one out")
    held = [i for i in range(n) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1] or [n - 1]
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


def split_documents(corpus: Corpus) -> tuple[list[str], list[str]]:
    """(calibration, held-out) documents: the texts of :func:`split_document_ids`."""
    docs = distinct_documents(corpus)
    calib, held = split_document_ids(corpus)
    return [docs[i] for i in calib], [docs[i] for i in held]


def token_stream(tokenizer: Any, documents: list[str]) -> np.ndarray:
    """Tokens of the documents joined by blank lines, without special tokens."""
    text = "\n\n".join(documents)
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return np.asarray(ids, dtype=np.int64)


def _bos(tokenizer: Any) -> int | None:
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos) if bos is not None else None


def _cut(stream: np.ndarray, slots: np.ndarray, body: int, bos: int | None) -> TokenWindows:
    starts = slots * body
    rows = [stream[s : s + body] for s in starts]
    ids = np.stack(rows)
    if bos is not None:
        ids = np.concatenate([np.full((len(rows), 1), bos, dtype=np.int64), ids], axis=1)
    return TokenWindows(input_ids=ids, starts=starts, has_bos=bos is not None)


def calibration_windows(
    tokenizer: Any, corpus: Corpus, n_samples: int, seq_len: int, seed: int = 0
) -> TokenWindows:
    """``n_samples`` seeded, non-overlapping windows of ``seq_len`` tokens from the calibration split."""
    if n_samples < 1 or seq_len < 2:
        raise BadInputError(f"need n_samples >= 1 and seq_len >= 2, got {n_samples} × {seq_len}")
    calib, _ = split_documents(corpus)
    stream = token_stream(tokenizer, calib)
    bos = _bos(tokenizer)
    body = seq_len - (1 if bos is not None else 0)
    n_slots = len(stream) // body
    if n_slots < n_samples:
        raise CorpusTooShortError(
            f"corpus {corpus.name!r} has {len(stream):,} calibration tokens, fewer than the "
            f"{n_samples} × {seq_len} = {n_samples * seq_len:,} requested; lower --n-samples/--seq-len "
            "or use a larger corpus"
        )
    rng = np.random.default_rng(seed)
    slots = np.sort(rng.choice(n_slots, size=n_samples, replace=False))
    return _cut(stream, slots, body, bos)


def heldout_windows(tokenizer: Any, corpus: Corpus, seq_len: int, max_windows: int | None = None) -> TokenWindows:
    """Held-out text concatenated and cut into consecutive ``seq_len`` chunks (BOS first)."""
    _, held = split_documents(corpus)
    stream = token_stream(tokenizer, held)
    bos = _bos(tokenizer)
    body = seq_len - (1 if bos is not None else 0)
    n = len(stream) // body
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise CorpusTooShortError(f"held-out split of {corpus.name!r} is shorter than one {seq_len}-token window")
    return _cut(stream, np.arange(n), body, bos)
