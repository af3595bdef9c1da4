"""Scoring requests as model rows, by lm-eval's rules (see gpt_jax/evaluation/scoring.py's docstring): the
checked token ids of a request or text, one Row per (context, continuation) request, and the
windows that score every token of a text once."""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np

from gpt_jax.model.checks import check_token_ids
from gpt_jax.model.config import GPTConfig
from gpt_jax.errors import UserError
from gpt_jax.model.tokenizer import EOT_ID


class Row(NamedTuple):
    """One forward pass: `inputs` (L,) int32, with positions first..L-1 scored against `targets`
    (L - first,) (the token each of those positions predicts)."""
    inputs: np.ndarray
    first: int
    targets: np.ndarray


# -- checking inputs ------------------------------------------------------------------------------

def token_ids(x, cfg: GPTConfig, what: str) -> np.ndarray:
    """A 1-D sequence of integer token ids as int32, or a one-line UserError naming `what`."""
    arr = check_token_ids(x, cfg.vocab_size, what)
    if arr.ndim != 1:
        raise UserError(f"{what} must be a flat list of token ids, got shape {arr.shape}")
    return arr.astype(np.int32)


def _prefix_id(cfg: GPTConfig, why: str) -> int:
    if EOT_ID >= cfg.vocab_size:
        raise UserError(f"{why} needs <|endoftext|> (id {EOT_ID}), but the model's vocab_size "
                        f"is {cfg.vocab_size}")
    return EOT_ID


def check_stride(stride, cfg: GPTConfig) -> int:
    if stride is None:
        return cfg.block_size
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) \
            or not 1 <= stride <= cfg.block_size:
        raise UserError(f"stride must be an integer in [1, {cfg.block_size}] (the model's "
                        f"block_size), got {stride!r}")
    return int(stride)



# -- rows ---------------------------------------------------------------------------------------

def request_row(context: np.ndarray, continuation: np.ndarray, cfg: GPTConfig) -> Row:
    """lm-eval's row for one (context, continuation) request (both checked int32 arrays)."""
    if len(context) == 0:
        context = np.array([_prefix_id(cfg, "an empty context")], np.int32)
    whole = np.concatenate([context, continuation])[-(cfg.block_size + 1):]
    inputs = whole[:-1]
    return Row(inputs, len(inputs) - len(continuation), continuation)


def window_rows(tokens: np.ndarray, cfg: GPTConfig, stride: int) -> list[Row]:
    """The windows that score every token of a text once (see the module docstring)."""
    n, bs = len(tokens), cfg.block_size
    if n == 0:
        return []
    seq = np.concatenate([[_prefix_id(cfg, "scoring a text (token 0 is conditioned on it)")],
                          tokens]).astype(np.int32)
    rows, start, scored = [], 0, 0      # tokens [0, scored) are done
    while scored < n:
        if start + bs >= n:             # the last window: moved left to end at the end
            start = max(0, n - bs)
        end = min(start + bs, n)        # inputs seq[start:end] predict tokens start..end-1
        rows.append(Row(seq[start:end], scored - start, seq[scored + 1:end + 1]))
        scored, start = end, start + stride
    return rows


def n_windows(n_tokens: int, cfg: GPTConfig, stride: Optional[int] = None) -> int:
    """How many windows token_logprobs runs over a text of n_tokens tokens (for progress bars)."""
    stride = check_stride(stride, cfg)
    if n_tokens <= cfg.block_size:
        return int(n_tokens > 0)
    return math.ceil((n_tokens - cfg.block_size) / stride) + 1
