"""Prepared token directories (gpt_jax/corpus.py writes them): their format, reading and
checking them, and the batch sampler over their splits.

Nothing is misreported: a prepared directory is checked before use (meta.json's fields and
types, each .bin's size against meta.json, and every token id < vocab_size, in one vectorised
pass), and a damaged one is a one-line DataError that says to prepare it again.

The sampler is step-indexed: the windows of step s come from np.random.default_rng([seed, 0, s])
alone, so the sampler's whole state is (seed, step) and a resumed run draws exactly the batches
the uninterrupted run would have. Eval batches use their own stream ([seed, 1 + split, step]),
so evaluating more or less often never changes the training batches.
"""
from __future__ import annotations

import json
import os
import platform
from typing import Optional, Sequence

import numpy as np

from gpt_jax.errors import DataError
from gpt_jax.tokenizer import N_VOCAB

# The format: SPLITS as <split>.bin files beside META, whose presence says both are complete.
FORMAT_VERSION = 1
META = "meta.json"
SPLITS = ("train", "val")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class DamagedData(DataError):
    """A prepared directory whose files are missing, damaged or inconsistent."""

    def __init__(self, data_dir: str, problem: str):
        self.dir, self.problem = data_dir, problem
        super().__init__(f"{problem}: prepare it again (python prepare.py --input TEXT... "
                         f"--out_dir {data_dir})")


def read_meta(data_dir: str) -> dict:
    """meta.json as a dict (not yet checked: see check_meta)."""
    path = os.path.join(data_dir, META)
    if not os.path.isfile(path):
        raise DataError(f"{data_dir} holds no {META}: it is not a prepared token directory "
                        f"(python prepare.py --input TEXT... --out_dir {data_dir})")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:   # ValueError: bad JSON or bytes that are not UTF-8
        raise DamagedData(data_dir, f"{path} is unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise DamagedData(data_dir, f"{path} is not a JSON object (it holds a "
                                    f"{type(meta).__name__}): it is damaged")
    return meta


def check_meta(meta: dict, data_dir: str) -> None:
    """The fields readers rely on are there, with the right types and values."""
    path = os.path.join(data_dir, META)
    need = ("format_version", "tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens")
    missing = [k for k in need if k not in meta]
    if missing:
        raise DamagedData(data_dir, f"{path} lacks {', '.join(missing)}: it is damaged")
    if meta["format_version"] != FORMAT_VERSION or not _is_int(meta["format_version"]):
        raise DamagedData(data_dir, f"{path} has format_version {meta['format_version']!r}; "
                                    f"this gpt_jax reads {FORMAT_VERSION}")
    if meta["tokenizer"] != "gpt2":
        raise DamagedData(data_dir, f"{path} does not describe GPT-2 BPE tokens "
                                    f"(tokenizer={meta['tokenizer']!r})")
    for key, want in (("vocab_size", N_VOCAB), ("dtype", "uint16")):
        if meta[key] != want or type(meta[key]) is not type(want):
            raise DamagedData(data_dir, f"{path} has {key} {meta[key]!r}, not {want!r}: it "
                                        f"is damaged")
    for s in SPLITS:
        n = meta[f"{s}_tokens"]
        if not _is_int(n) or n < 1:
            raise DamagedData(data_dir, f"{path} has {s}_tokens {n!r}, not a positive "
                                        f"integer: it is damaged")


def load_split(data_dir: str, split: str, n_tokens: Optional[int] = None) -> np.memmap:
    """split.bin memmapped, its size checked (and against n_tokens when given)."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise DamagedData(data_dir, f"{path} is missing or empty")
    size = os.path.getsize(path)
    if size % 2:
        raise DamagedData(data_dir, f"{path} has an odd size ({size} bytes) but holds 2-byte "
                                    f"tokens: it is damaged")
    if n_tokens is not None and size // 2 != n_tokens:
        raise DamagedData(data_dir, f"{path} holds {size // 2} tokens but {META} says "
                                    f"{n_tokens}: it is damaged")
    try:
        return np.memmap(path, dtype=np.uint16, mode="r")
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e})") from None


def check_token_ids(tokens: np.ndarray, vocab_size: int, data_dir: str, split: str) -> None:
    """Every id < vocab_size: one vectorised pass (bytes written over a .bin file make ids up
    to 65535, which the embedding lookup would turn into NaN losses, not an error)."""
    top = int(tokens.max())
    if top >= vocab_size:
        raise DamagedData(data_dir, f"{os.path.join(data_dir, split + '.bin')} holds token id "
                                    f"{top}, but ids stop at {vocab_size - 1}: it is damaged")


def check_dir(data_dir: str) -> tuple[dict, dict]:
    """(meta, {split: memmap}) of a prepared directory, all checked; DataError if not."""
    meta = read_meta(data_dir)
    check_meta(meta, data_dir)
    splits = {s: load_split(data_dir, s, meta[f"{s}_tokens"]) for s in SPLITS}
    for s, arr in splits.items():
        check_token_ids(arr, meta["vocab_size"], data_dir, s)
    return meta, splits


def _reusable(data_dir: str, stamp=None) -> bool:
    """Whether a directory resolve() prepares holds complete, undamaged data (made from
    `stamp`'s files when given). Says why when it is damaged: it is then prepared again."""
    if not os.path.lexists(os.path.join(data_dir, META)):
        return False
    try:
        meta, _ = check_dir(data_dir)
    except DataError as e:
        print(f"{data_dir} is damaged ({getattr(e, 'problem', e)}); preparing it again",
              flush=True)
        return False
    return stamp is None or meta.get("stamp") == stamp


def resolve(data: str, *, cache_dir: Optional[str] = None, progress: bool = True) -> str:
    """A prepared token directory for --data: `builtin` (prepared once into builtin_dir()),
    a directory with meta.json, or text files/dirs (comma-separated; tokenised into
    cache_dir, reused while the sources are unchanged). A damaged builtin or cache directory,
    or a builtin one prepared by other code or another Python, is prepared again."""
    # Imported on use: both import this module (the format they write and check).
    from gpt_jax import builtin_corpus, corpus, textfiles
    if data == "builtin":
        d = corpus.builtin_dir()
        if not _reusable(d, builtin_corpus.stamp()):   # e.g. an older version's corpus
            print(f"preparing the built-in corpus (Python {platform.python_version()} stdlib docs) "
                  f"into {d} ...", flush=True)
            corpus.prepare_builtin(d, progress=progress)
        return d
    paths = [p for p in data.split(",") if p]
    if not paths:
        raise DataError("--data is empty: pass `builtin`, a prepared directory or text files")
    if len(paths) == 1 and os.path.isfile(os.path.join(paths[0], META)):
        return paths[0]
    candidates = textfiles.candidate_files(paths)
    if cache_dir is None:
        raise DataError(f"{data} is not a prepared token directory: run prepare.py first")
    stamp = [[p, os.path.getsize(p), os.path.getmtime(p)] for p, _ in candidates]
    if _reusable(cache_dir, stamp):
        return cache_dir
    print(f"tokenising {len(candidates)} file(s) from {data} into {cache_dir} ...", flush=True)
    corpus.prepare_files(paths, cache_dir, progress=progress, extra_meta={"stamp": stamp})
    return cache_dir


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
