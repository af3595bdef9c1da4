"""Training batches from a prepared token directory: TokenData (its two splits, checked
against the model) and the step-indexed BatchSampler.

The sampler is step-indexed: the windows of step s come from np.random.default_rng([seed, 0, s])
alone, so the sampler's whole state is (seed, step) and a resumed run draws exactly the batches
the uninterrupted run would have. Eval batches use their own stream ([seed, 1 + split, step]),
so evaluating more or less often never changes the training batches.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gpt_jax.data.format import SPLITS, check_dir
from gpt_jax.errors import DataError


class TokenData:
    """The two memmapped splits of a prepared directory, checked (check_dir) and checked
    against the model."""

    def __init__(self, data_dir: str, *, block_size: int, vocab_size: int):
        self.dir = data_dir
        self.meta, self.splits = check_dir(data_dir)
        meta_vocab = self.meta["vocab_size"]
        if meta_vocab > vocab_size:
            raise DataError(f"the tokens in {data_dir} use a vocabulary of {meta_vocab} ids but "
                            f"the model's vocab_size is {vocab_size}: use --vocab_size "
                            f"{meta_vocab} (or more) or other data")
        for s, arr in self.splits.items():
            if len(arr) < block_size + 1:
                raise DataError(f"the {s} split of {data_dir} has {len(arr)} tokens, fewer "
                                f"than block_size + 1 = {block_size + 1}: use more text or a "
                                f"smaller --block_size")


def _windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    return np.stack([tokens[s:s + length] for s in starts]).astype(np.int32)


class BatchSampler:
    """Random windows of block_size + 1 tokens. Stateless apart from (seed, step)."""

    def __init__(self, data: TokenData, *, block_size: int, batch_size: int, accum: int = 1,
                 seed: int = 0):
        self.data, self.T, self.B, self.accum, self.seed = data, block_size, batch_size, accum, seed

    def _starts(self, split: str, n: int, stream: Sequence[int]) -> np.ndarray:
        hi = len(self.data.splits[split]) - (self.T + 1)   # last valid start, inclusive
        return np.random.default_rng([self.seed, *stream]).integers(0, hi + 1, size=n)

    def train_batch(self, step: int) -> np.ndarray:
        """int32 (accum, batch_size, block_size + 1) for optimizer step `step`."""
        starts = self._starts("train", self.accum * self.B, (0, step))
        return _windows(self.data.splits["train"], starts, self.T + 1).reshape(
            self.accum, self.B, self.T + 1)

    def eval_batches(self, split: str, step: int, n: int) -> np.ndarray:
        """int32 (n, batch_size, block_size + 1): eval at `step`, independent of training."""
        starts = self._starts(split, n * self.B, (1 + SPLITS.index(split), step))
        return _windows(self.data.splits[split], starts, self.T + 1).reshape(
            n, self.B, self.T + 1)

    def state(self, step: int) -> dict:
        return {"kind": "step-indexed", "seed": self.seed, "next_step": int(step)}
