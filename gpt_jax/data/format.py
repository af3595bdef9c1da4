"""The prepared token directory's format (gpt_jax/data/prepare.py writes it): meta.json and
one <split>.bin per split, read and checked.

Nothing is misreported: a prepared directory is checked before use (meta.json's fields and
types, each .bin's size against meta.json, and every token id < vocab_size, in one vectorised
pass), and a damaged one is a one-line DataError that says to prepare it again.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from gpt_jax.errors import DataError
from gpt_jax.model.tokenizer import N_VOCAB

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
