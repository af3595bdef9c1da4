"""The study's small vocabulary: the built-in corpus re-coded to its `size - 1` most frequent
GPT-2 BPE ids plus one UNK id, and the unigram baseline of that setting.

Why: with GPT-2's 50,257 ids, a model the study can train in minutes on 2 CPU cores never gets
past unigram statistics (every arm ended at 7.30-7.36 nats, the unigram loss), so no claim
about what helps a model *learn* can show. With ~1k ids the same budget learns well past the
unigram loss, and every trained result is reported against that baseline (`unigram`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpt_jax.data.tokens import TokenData

__all__ = ["SmallVocab", "small_vocab", "unigram_loss"]


@dataclass
class SmallVocab:
    """TokenData-shaped (`splits`, `meta`, `dir`: BatchSampler reads these) re-coded data.

    ids: the GPT-2 ids kept, most frequent first (small id i <- GPT-2 id ids[i]); every other
    GPT-2 id becomes `unk` (= len(ids)). counts: train-split frequency of each small id.
    """
    splits: dict
    meta: dict
    dir: str
    ids: np.ndarray
    counts: np.ndarray

    @property
    def size(self) -> int:
        return len(self.ids) + 1

    @property
    def unk(self) -> int:
        return len(self.ids)

    def encode(self, gpt2_ids) -> np.ndarray:
        """GPT-2 ids -> small ids (unknown ids -> unk)."""
        table = np.full(max(int(self.ids.max()), int(np.max(gpt2_ids))) + 1, self.unk, np.int32)
        table[self.ids] = np.arange(len(self.ids), dtype=np.int32)
        return table[np.asarray(gpt2_ids)]

    def decode(self, small_ids, enc, unk: str = "\u2047") -> str:
        """Small ids -> text through the GPT-2 tokenizer `enc`; unk shows as `unk`."""
        out, run = [], []
        for i in np.asarray(small_ids).tolist():
            if i == self.unk:
                out.append(enc.decode(run) + unk)
                run = []
            else:
                run.append(int(self.ids[i]))
        return "".join(out) + enc.decode(run)


def small_vocab(data: TokenData, size: int = 1024) -> SmallVocab:
    """Re-code `data` (GPT-2 ids) to its `size - 1` most frequent train-split ids plus UNK.

    Raises:
        ValueError: size < 2.
    """
    if size < 2:
        raise ValueError(f"size must be at least 2 (one kept id plus UNK), got {size}")
    train = np.asarray(data.splits["train"])
    counts = np.bincount(train, minlength=int(train.max()) + 1)
    # a stable sort: ties broken by id, so the vocabulary is the same on every machine
    ids = np.argsort(-counts, kind="stable")[:size - 1].astype(np.int32)
    v = SmallVocab({}, dict(data.meta, vocab_size=size), data.dir, ids, np.zeros(size, np.int64))
    v.splits = {k: v.encode(a) for k, a in data.splits.items()}
    v.counts = np.bincount(v.splits["train"], minlength=size)
    return v


def unigram_loss(v: SmallVocab, split: str = "val") -> float:
    """Cross-entropy (nats/token) on `split` of the train split's unigram distribution
    (add-one smoothed): the loss of a model that learned token frequencies and nothing else,
    the floor a trained arm must get below to have learned anything from context."""
    p = (v.counts + 1) / (v.counts.sum() + v.size)
    return float(-np.log(p[v.splits[split]]).mean())
