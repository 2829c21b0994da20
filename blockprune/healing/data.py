"""Causal-LM training windows from the training split of corpora, and the order they are consumed in.

Documents are split exactly as calibration and perplexity split them
(:func:`blockprune.calibration.windows.split_document_ids`): every 10th distinct document is held out
and never becomes a training token. Every token remembers the document it came from, so a test can
prove that no held-out document reaches a training batch.

The order is a pure function of (seed, optimizer step, rank): global step ``s`` trains on windows
``perm[s·B : (s+1)·B]`` of one seeded permutation, and device ``r`` takes its slice of that batch. So a
run resumed from a checkpoint at step ``s`` continues with exactly the windows it would have seen, and a
run on 2 devices sees the same global batches as a run on 1. Each window is used at most once: a budget
larger than the training split is refused before training starts (:class:`NotEnoughTrainingTokensError`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from blockprune.calibration.corpora import Corpus
from blockprune.calibration.windows import (
    CorpusTooShortError,
    TokenWindows,
    distinct_documents,
    heldout_windows,
    split_document_ids,
)


class NotEnoughTrainingTokensError(CorpusTooShortError):
    """The training split cannot supply the budget without repeating windows."""


@dataclass(frozen=True)
class TrainingWindows:
    """``input_ids`` (n_windows, seq_len), BOS first; ``doc_of_token`` the same shape, an index into ``documents``.

    ``documents[k]`` is ``(corpus name, id into distinct_documents(corpus))``. The BOS column carries the
    document of the first real token.
    """

    input_ids: np.ndarray
    doc_of_token: np.ndarray
    documents: tuple[tuple[str, int], ...]
    corpus_of_window: np.ndarray  # index into ``corpora``
    corpora: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.size)

    def window_documents(self, windows: Sequence[int]) -> set[tuple[str, int]]:
        """The (corpus, document id) pairs whose tokens appear in these windows."""
        ks = np.unique(self.doc_of_token[np.asarray(windows, dtype=np.int64)])
        return {self.documents[int(k)] for k in ks}


def _bos(tokenizer: Any) -> int | None:
    bos = getattr(tokenizer, "bos_token_id", None)
    return int(bos) if bos is not None else None


def _corpus_stream(tokenizer: Any, corpus: Corpus, doc_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of the given documents joined by blank lines (as calibration joins them), and each token's document."""
    docs = distinct_documents(corpus)
    texts = [docs[i] for i in doc_ids]
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    ids: list[int] = []
    owner: list[int] = []
    for n, (doc, toks) in enumerate(zip(doc_ids, encoded, strict=True)):
        piece = list(toks) + (list(sep) if n < len(texts) - 1 else [])
        ids.extend(piece)
        owner.extend([doc] * len(piece))
    return np.asarray(ids, dtype=np.int64), np.asarray(owner, dtype=np.int64)


def training_windows(tokenizer: Any, corpora: Sequence[Corpus], seq_len: int) -> TrainingWindows:
    """Consecutive non-overlapping ``seq_len`` windows (BOS first) of each corpus's training split."""
    bos = _bos(tokenizer)
    body = seq_len - (1 if bos is not None else 0)
    rows, owners, corpus_idx = [], [], []
    documents: list[tuple[str, int]] = []
    for c, corpus in enumerate(corpora):
        train_ids, _ = split_document_ids(corpus)
        stream, owner = _corpus_stream(tokenizer, corpus, train_ids)
        offset = len(documents)
        documents.extend((corpus.name, i) for i in range(len(distinct_documents(corpus))))
        n = len(stream) // body
        if n == 0:
            continue
        ids = stream[: n * body].reshape(n, body)
        own = owner[: n * body].reshape(n, body) + offset
        if bos is not None:
            ids = np.concatenate([np.full((n, 1), bos, dtype=np.int64), ids], axis=1)
            own = np.concatenate([own[:, :1], own], axis=1)
        rows.append(ids)
        owners.append(own)
        corpus_idx.append(np.full(n, c, dtype=np.int64))
    if not rows:
        names = ", ".join(c.name for c in corpora)
        raise NotEnoughTrainingTokensError(f"the training split of {names} is shorter than one {seq_len}-token window")
    return TrainingWindows(np.concatenate(rows), np.concatenate(owners), tuple(documents),
                           np.concatenate(corpus_idx), tuple(c.name for c in corpora))


def check_budget(windows: TrainingWindows, total_steps: int, batch_size: int, seq_len: int) -> None:
    """Refuse a budget that would need more windows than the training split has (no window is repeated)."""
    need = total_steps * batch_size
    if need > len(windows):
        have_tok = windows.n_tokens
        raise NotEnoughTrainingTokensError(
            f"the training split of {', '.join(windows.corpora)} has {have_tok:,} tokens ({len(windows)} windows of "
            f"{seq_len}), fewer than the budget of {total_steps} steps × {batch_size} windows × {seq_len} = "
            f"{need * seq_len:,} tokens; at most {len(windows) // batch_size} steps fit: lower --steps/--tokens or "
            "add --corpus"
        )


def heldout_sets(tokenizer: Any, corpora: Sequence[Corpus], seq_len: int, n_windows: int) -> dict[str, TokenWindows]:
    """Held-out windows per corpus (the same windows ``blockprune calibrate``/``evaluate`` measure)."""
    return {c.name: heldout_windows(tokenizer, c, seq_len, n_windows) for c in corpora}


def window_order(n_windows: int, seed: int) -> np.ndarray:
    """The seeded permutation every rank and every resumed run agrees on."""
    return np.random.default_rng(seed).permutation(n_windows)


class StepBatchSampler:
    """Micro-batches of window indices for optimizer steps ``start_step … total_steps − 1`` on one rank.

    Step ``s``, accumulation slot ``a`` (of ``accum``), rank ``r`` (of ``world``) takes
    ``order[s·B + (a·world + r)·m : … + m]`` with ``B = m·accum·world``. ``__len__`` is the micro-batch
    count of the whole run (not of what remains), which is what Lightning's progress counters restored
    from a checkpoint expect.
    """

    def __init__(self, order: np.ndarray, micro: int, accum: int, world: int, rank: int, total_steps: int,
                 start_step: int = 0) -> None:
        self.order, self.micro, self.accum, self.world, self.rank = order, micro, accum, world, rank
        self.total_steps, self.start_step = total_steps, start_step
        if total_steps * micro * accum * world > len(order):
            raise NotEnoughTrainingTokensError(f"{total_steps} steps need {total_steps * micro * accum * world} "
                                               f"windows, only {len(order)} exist")

    def batches(self, step: int) -> list[list[int]]:
        """The micro-batches this rank trains on at optimizer step ``step``."""
        base = step * self.micro * self.accum * self.world
        out = []
        for a in range(self.accum):
            lo = base + (a * self.world + self.rank) * self.micro
            out.append([int(i) for i in self.order[lo : lo + self.micro]])
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            yield from self.batches(step)

    def __len__(self) -> int:
        return self.total_steps * self.accum


class WindowDataset(Dataset):
    """Rows of a token-window array; ``window`` is the row index (document ids are looked up from it)."""

    def __init__(self, input_ids: np.ndarray, corpus_of_window: np.ndarray | None = None) -> None:
        self.input_ids = input_ids
        self.corpus = corpus_of_window if corpus_of_window is not None else np.zeros(len(input_ids), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.from_numpy(self.input_ids[i]), "window": torch.tensor(i),
                "corpus": torch.tensor(int(self.corpus[i]))}


def validation_dataset(sets: dict[str, TokenWindows], rank: int = 0, world: int = 1) -> WindowDataset:
    """All corpora's validation windows in one dataset (``corpus`` = index in ``sets``), this rank's share."""
    ids = np.concatenate([w.input_ids for w in sets.values()])
    corpus = np.concatenate([np.full(len(w.input_ids), k, dtype=np.int64) for k, w in enumerate(sets.values())])
    keep = np.arange(rank, len(ids), world)
    return WindowDataset(ids[keep], corpus[keep])
