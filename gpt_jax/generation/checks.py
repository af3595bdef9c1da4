"""Host-side checks of generate()'s and beam search's inputs: lengths, sampling settings, the
weights format, eos / pad ids, the key and the prompts. Each returns the value in one canonical
form or raises a one-line UserError, before anything is compiled or allocated.
"""
from __future__ import annotations

import numbers
from typing import Optional

import jax
import numpy as np

from gpt_jax.errors import PromptTooLongError, TokenError, UserError
from gpt_jax.generation.step import WEIGHT_FORMATS
from gpt_jax.model.checks import check_positive_int, check_token_ids, scalar
from gpt_jax.model.config import GPTConfig


def check_max_new_tokens(max_new_tokens, cfg: GPTConfig) -> int:
    n = check_positive_int(max_new_tokens, "max_new_tokens")
    if n >= cfg.block_size:  # no room left for even a one-token prompt
        raise PromptTooLongError(
            f"max_new_tokens {n} leaves no room for a prompt in the model's block_size "
            f"{cfg.block_size}: ask for at most {cfg.block_size - 1} tokens")
    return n


def check_sampling(temperature, top_k, top_p) -> tuple[float, Optional[int], Optional[float]]:
    """(temperature, top_k, top_p) as Python numbers once each is of the right type and range:
    temperature >= 0 (inf allowed: uniform sampling), top_k an int >= 1, top_p in (0, 1]."""
    t = scalar(temperature, integer=False)
    if t is None or not t >= 0:  # NaN fails too
        raise UserError(f"temperature must be a number >= 0 (0 is greedy), got {temperature!r}")
    k = None if top_k is None else check_positive_int(top_k, "top_k", " (or None for no top-k)")
    p = None if top_p is None else scalar(top_p, integer=False)
    if top_p is not None and (p is None or not 0 < p <= 1):
        raise UserError(f"top_p must be a number in (0, 1] (or None for no top-p), "
                        f"got {top_p!r}")
    return t, k, p


def check_decode_weights(weights) -> Optional[str]:
    """None (the compute dtype), or one of the formats the decode loop can store weights in:
    a compute dtype name or "int8"."""
    if weights is not None and (not isinstance(weights, str) or weights not in WEIGHT_FORMATS):
        raise UserError(f"weights must be None (the model's dtype) or one of "
                        f"{', '.join(map(repr, WEIGHT_FORMATS))}, got {weights!r}")
    return weights


def check_eos_id(eos_id, cfg: GPTConfig) -> Optional[int]:
    """None, or an id the model can emit: an int in [0, n_real_vocab) (padded ids never are)."""
    if eos_id is None:
        return None
    e = scalar(eos_id, integer=True)
    if e is None or not 0 <= e < cfg.n_real_vocab:
        raise UserError(f"eos_id must be None or a token id the model can emit, an integer in "
                        f"[0, {cfg.n_real_vocab}), got {eos_id!r}")
    return e


def check_key(key):
    """A jax PRNG key: key itself (one typed key, or a legacy uint32 key such as
    jax.random.PRNGKey(0)), jax.random.key(key) for an int seed, key(0) for None."""
    if key is None:
        return jax.random.key(0)
    seed = scalar(key, integer=True)
    if seed is not None:
        if not 0 <= seed < 2 ** 32:  # jax keeps the low 32 bits: 2**32 would repeat seed 0
            raise UserError(f"an int key is a seed in [0, 2**32), got {seed}")
        return jax.random.key(seed)
    dtype, shape = getattr(key, "dtype", None), getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) and shape == ():
        return key
    if dtype == np.uint32 and shape is not None and len(shape) == 1:
        return key
    what = f"an array of shape {shape} and dtype {dtype}" if shape is not None else \
        type(key).__name__
    raise UserError(f"key must be one jax PRNG key such as jax.random.key(0), or an int seed; "
                    f"got {what}")


def check_prompts(prompts, cfg: GPTConfig, max_new_tokens: int) -> list[np.ndarray]:
    """The prompts as 1-D int64 rows, once each is a non-empty list of ids in range and the
    longest, with max_new_tokens, fits block_size (checked before any padding)."""
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise UserError("prompts is empty: pass a list of prompts, e.g. [[50256]]")
        rows = _equal_rows(prompts, cfg)
        if rows is None:
            rows = [_prompt_row(b, p, prompts, cfg) for b, p in enumerate(prompts)]
    else:
        if isinstance(prompts, (str, bytes)):
            raise TokenError("prompts are token ids, not text: encode it first "
                             "(gpt_jax.get_tokenizer().encode(text)) and pass [ids]")
        if isinstance(prompts, jax.core.Tracer):
            raise UserError("generate() runs on concrete prompts: call it outside jax.jit / "
                            "vmap (it compiles its own decoder)")
        if not hasattr(prompts, "shape") and not hasattr(prompts, "__array__"):
            raise TokenError(f"prompts must be a list of token lists or an int array (B, T), "
                             f"got {type(prompts).__name__}")
        arr = check_token_ids(prompts, cfg.vocab_size, "prompts")
        if arr.ndim != 2:
            hint = ": pass ids[None] (shape (1, T)) for one prompt" if arr.ndim == 1 else ""
            raise TokenError(f"prompts must be a list of token lists or an int array (B, T), "
                             f"got an array of shape {arr.shape}{hint}")
        if arr.shape[0] == 0:
            raise UserError("prompts is empty: pass at least one prompt")
        rows = list(arr)
    if any(len(r) == 0 for r in rows):
        raise TokenError("every prompt needs at least one token (e.g. <|endoftext|>)")
    longest = max(len(r) for r in rows)
    if longest + max_new_tokens > cfg.block_size:
        raise PromptTooLongError(
            f"prompt length {longest} + max_new_tokens {max_new_tokens} = "
            f"{longest + max_new_tokens} exceeds the model's block_size {cfg.block_size}: "
            f"shorten the prompt or ask for fewer tokens")
    return rows


def _prompt_row(b: int, p, prompts, cfg: GPTConfig) -> np.ndarray:
    """Prompt b of a list, checked: a 1-D row of ids in range."""
    if isinstance(p, (str, bytes)):
        raise TokenError(f"prompt {b} is text: encode it first "
                         f"(gpt_jax.get_tokenizer().encode(text))")
    if isinstance(p, (numbers.Number, np.generic)) or getattr(p, "ndim", None) == 0:
        shown = ", ".join(str(x) for x in prompts[:3]) + (", ..." if len(prompts) > 3 else "")
        raise TokenError(f"prompts is a flat list of token ids: pass a list of prompts, "
                         f"e.g. [[{shown}]] for one prompt")
    r = check_token_ids(p, cfg.vocab_size, f"prompt {b}")
    if r.ndim != 1:
        raise TokenError(f"prompt {b} must be a flat list of token ids, got shape {r.shape}")
    return r


def _equal_rows(prompts, cfg: GPTConfig) -> Optional[list[np.ndarray]]:
    """Prompts that are lists (or tuples) of one length, read as one array: one conversion and
    one range check instead of one per row (sample.py's batches are such). None where they are
    not, or are bad: the row-by-row path then says which row is wrong and how."""
    first = prompts[0]
    if not isinstance(first, (list, tuple)) or not all(
            type(p) is type(first) and len(p) == len(first) for p in prompts):
        return None
    try:
        arr = check_token_ids(prompts, cfg.vocab_size, "prompts")
    except TokenError:
        return None
    return list(arr) if arr.ndim == 2 and arr.shape[1] else None


def check_pad_id(pad_id, eos_id: Optional[int], cfg: GPTConfig) -> int:
    """What a stopped row holds: pad_id (an int id in [0, vocab_size), or -1), by default
    eos_id, or -1 without one."""
    if pad_id is None:
        return -1 if eos_id is None else eos_id
    p = scalar(pad_id, integer=True)
    if p is None or not -1 <= p < cfg.vocab_size:
        raise UserError(f"pad_id must be None, -1 or a token id in [0, {cfg.vocab_size}), "
                        f"got {pad_id!r}")
    return p
