"""Prompts as the decode loop takes them: left-padded into a bucket of a power-of-two length,
so that prompts of many lengths share a few compiled programs and every row's last prompt token
sits at index P-1."""
from __future__ import annotations

from typing import Optional

import numpy as np

from gpt_jax.generation.checks import check_prompts
from gpt_jax.model.config import GPTConfig


def bucket_length(n: int, block_size: int) -> int:
    """Prompt lengths are padded to powers of two (at least 8) so varied prompts share programs."""
    return min(max(8, 1 << (n - 1).bit_length()), block_size)


def left_pad(prompts, cfg: GPTConfig) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 (B, P), pad int32 (B,)): prompts (as generate() takes them, checked here)
    right-aligned in a bucket of length P."""
    return pad_rows(check_prompts(prompts, cfg, 0), cfg)


def pad_rows(rows: list[np.ndarray], cfg: GPTConfig) -> tuple[np.ndarray, np.ndarray]:
    """left_pad for rows check_prompts returned."""
    lengths = np.array([len(r) for r in rows])
    P = bucket_length(int(lengths.max()), cfg.block_size)
    tokens = np.zeros((len(rows), P), np.int32)
    for b, r in enumerate(rows):
        tokens[b, P - len(r):] = r
    return tokens, (P - lengths).astype(np.int32)


def batch_size(prompts) -> Optional[int]:
    """How many prompts, without reading them (None where that needs reading them)."""
    if isinstance(prompts, (list, tuple)):
        return len(prompts)
    shape = getattr(prompts, "shape", None)
    return int(shape[0]) if shape else None
