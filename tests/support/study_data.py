"""Synthetic corpora for the study's topic tests (tests/lab/test_study_*.py)."""
import numpy as np

from gpt_jax.lab.study.vocab import small_vocab


class TokenDataLike:
    """TokenData-shaped GPT-2 ids (the two splits and meta small_vocab reads)."""

    def __init__(self, train, val):
        self.splits = {"train": np.asarray(train), "val": np.asarray(val)}
        self.meta, self.dir = {"vocab_size": 50257}, "mem"


def zipf_data(size=48, n=6000, seed=0):
    """A SmallVocab of Zipf-distributed GPT-2 ids (some beyond the kept ones: UNK)."""
    rng = np.random.default_rng(seed)
    ids = 100 + np.minimum(rng.zipf(1.3, 2 * n), 200)
    return small_vocab(TokenDataLike(ids[:n], ids[n:]), size)


class ZipfStream(TokenDataLike):
    """A Zipf-like stream of ids below 5000 in both splits (the norm and probe tests)."""

    def __init__(self, seed=0, n=50_000):
        rng = np.random.default_rng(seed)
        super().__init__(*(np.minimum(rng.zipf(1.3, n), 5000) for _ in ("train", "val")))
