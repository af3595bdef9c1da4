"""Sampling filters and a compiled decoder: prefill in one pass, then lax.scan over a KV cache.

generate() is one jitted program per static shape: the prompt batch is left-padded to a bucket
length P (a power of two), so every row's last prompt token sits at index P-1 and all rows write
the cache at the same index each step. Per-row positions (index - row padding) and an explicit
mask (keys from the row's first real token up to the query) make each row compute exactly what it
would alone. The cache, preallocated for P + max_new_tokens - 1 entries, is updated in place with
dynamic_update_slice inside the scan carry: no Python loop over tokens, no growing concatenation.
The prefill fills per-layer (B, S, H, D) caches (init_cache); the loop keeps them heads-major,
(B*H, S, D), the layout in which XLA reads them without a copy per step (model.heads_major).
Inputs are checked on the host first (the check_* functions: types, ranges, lengths, and an
estimate of the memory the decode needs), so bad input is one UserError line, never an error
from inside JAX or an out-of-memory kill.
"""
from __future__ import annotations

import functools
import numbers
import os
import weakref
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.config import GPTConfig
from gpt_jax.errors import UserError
from gpt_jax.model import (GPT, KVCache, TokenError, check_params, check_token_ids,
                           decode_step, decode_weights, heads_major, mask_vocab)


class PromptTooLongError(UserError, ValueError):
    """prompt length + max_new_tokens does not fit the model's block_size."""


class DecodeMemoryError(UserError, MemoryError):
    """The KV cache and logits of one generate() call would not fit in the memory available."""


# -- sampling filters: pure functions of (..., V) float32 logits ------------------------------

def apply_temperature(logits, temperature):
    """Divide by temperature > 0 (lower: sharper; temperature 0 is greedy, handled apart).

    The maximum is moved to 0 first (softmax is unchanged), so no temperature overflows: every
    result is <= 0. As temperature -> 0 all but the maxima go to -inf (the argmax, exact ties
    drawn at random); temperature = inf makes every finite logit 0 (uniform over them), and
    -inf (a filtered or padded id) stays -inf at any temperature. A temperature below the
    smallest normal float32 acts as that one (XLA:CPU reads subnormals as 0: 0/0 is NaN)."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    temperature = jnp.maximum(temperature, _TINY)
    return jnp.where(logits == -jnp.inf, -jnp.inf, (logits - top) / temperature)


_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def top_k_filter(logits, k: int):
    """Keep the k largest logits, -inf elsewhere (ties with the k-th all survive): a logit stays
    when fewer than k logits are strictly larger. k < 1 (possibly traced, so not refusable
    here) acts as 1: the filter never leaves a row with nothing to sample."""
    k = jnp.maximum(k, 1)
    return jnp.where(_keep_above(logits, jnp.int32(1), k), logits, -jnp.inf)


def top_p_filter(logits, p):
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p (ties
    with the last one all survive): a logit stays when the tokens strictly more likely than it
    hold less than p of the probability. A p that float32 rounds to 0 keeps the most likely."""
    p = jnp.maximum(p, _TINY)
    return jnp.where(_keep_above(logits, jax.nn.softmax(logits, axis=-1), p), logits, -jnp.inf)


def _keep_above(logits, weight, limit):
    """bool (..., V): logit x stays where sum(weight of the logits > x) < limit.

    That sum only falls as x rises, so the logits kept are those >= a threshold, found exactly by
    bisecting over the 2^32 float32 values in 32 steps of one masked sum each: ~0.5-1 ms for
    50257 logits, where a sort or lax.top_k takes 9-11 ms per row on XLA:CPU."""
    bits = jax.lax.bitcast_convert_type(logits.astype(jnp.float32), jnp.uint32)
    # uint32 keys in the order of the floats: negatives flipped whole, positives above them.
    keys = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))

    def halve(_, bounds):  # invariant: the threshold is in (lo, hi]
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        below_limit = jnp.sum(jnp.where(keys > mid[..., None], weight, 0), axis=-1) < limit
        return jnp.where(below_limit, lo, mid), jnp.where(below_limit, mid, hi)

    rows = keys.shape[:-1]
    bounds = (jnp.zeros(rows, jnp.uint32), jnp.full(rows, 0xFFFFFFFF, jnp.uint32))
    _, threshold = jax.lax.fori_loop(0, 32, halve, bounds)
    return keys >= threshold[..., None]


def first_argmax(logits):
    """argmax over the last axis (the first index of the maximum), as int32.

    Two plain reductions (max, then the smallest index holding it) instead of argmax's
    (value, index) reduction, which XLA:CPU does not vectorise: 0.07 vs 0.22 ms over GPT-2's
    50257 logits (0.24 vs 0.89 ms at batch 8), every decode step."""
    V = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(logits == top, jnp.arange(V, dtype=jnp.int32), V), axis=-1)
    return jnp.minimum(first, V - 1)  # NaN logits match nothing: stay a valid id


def sample_logits(logits, key, *, temperature=1.0, top_k: Optional[int] = None, top_p=None,
                  greedy: bool = False):
    """int32 (...,) token ids from (..., V) logits: top-k, then temperature, then top-p.

    greedy (static) is argmax and skips everything else; top_k and top_p (None skips either)
    are the optional filters; both may be traced values. top-k keeps the same tokens before or
    after any temperature > 0; it runs first so that temperature = inf (uniform sampling) is
    uniform over its k survivors rather than over a vocabulary made flat. top-p reads the
    tempered distribution (as Hugging Face's does): at temperature = inf that distribution is
    uniform, and its nucleus is all of it.
    """
    if greedy:
        return first_argmax(logits)
    logits = logits.astype(jnp.float32)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    logits = apply_temperature(logits, temperature)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    # jax.random.categorical's Gumbel-max draw (the same noise, so the same samples), with the
    # vectorised first_argmax in place of its argmax.
    return first_argmax(logits + jax.random.gumbel(key, logits.shape, logits.dtype))


# -- the KV cache and the compiled decoder ----------------------------------------------------

def init_cache(cfg: GPTConfig, batch: int, length: int) -> KVCache:
    """Per layer (k, v), each zeros (B, length, n_head, head_dim) in the compute dtype."""
    shape = (batch, length, cfg.n_head, cfg.head_dim)
    return tuple((jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))
                 for _ in range(cfg.n_layer))


def decode_mask(pad, q_index, length: int):
    """(B, 1, T, S) bool: query at cache index q sees keys pad <= k <= q, and always itself
    (so the queries of padding never see an empty row, whose softmax would be garbage)."""
    k = jnp.arange(length)[None, None, :]        # (1, 1, S)
    q = q_index[None, :, None]                   # (1, T, 1)
    seen = (k >= pad[:, None, None]) & (k <= q)  # (B, T, S)
    return (seen | (k == q))[:, None]


def bucket_length(n: int, block_size: int) -> int:
    """Prompt lengths are padded to powers of two (at least 8) so varied prompts share programs."""
    return min(max(8, 1 << (n - 1).bit_length()), block_size)


_traces = 0  # how many times _decode was traced (tests check that repeated calls do not retrace)


def trace_count() -> int:
    return _traces


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "greedy", "use_top_k",
                                             "use_top_p", "return_logits"))
def _decode(params, weights, tokens, pad, key, temperature, top_k, top_p, eos_id, *,
            cfg: GPTConfig, max_new_tokens: int, greedy: bool, use_top_k: bool, use_top_p: bool,
            return_logits: bool):
    global _traces
    _traces += 1
    B, P = tokens.shape                      # left-padded prompts; pad (B,) = padding per row
    N = max_new_tokens
    S = P + N - 1                            # the last new token is sampled, never fed back
    model = GPT(cfg)

    def pick(logits, key, done):             # logits (B, V) -> tokens (B,), done (B,)
        # -inf, not the model's -1e9, for padded ids: no temperature can make them likely.
        logits = mask_vocab(logits, cfg.n_real_vocab)
        tok = sample_logits(logits, key, temperature=temperature,
                            top_k=top_k if use_top_k else None,
                            top_p=top_p if use_top_p else None, greedy=greedy)
        tok = jnp.where(done, eos_id, tok)   # finished rows repeat eos_id
        return tok, done | (tok == eos_id)

    # Prefill: the whole prompt in one pass writes cache[:, :P]; logits of index P-1 only.
    idx = jnp.arange(P)
    positions = jnp.maximum(idx[None, :] - pad[:, None], 0)                    # (B, P)
    logits, cache = model.apply({"params": params}, tokens, positions=positions,
                                mask=decode_mask(pad, idx, S), kv_cache=init_cache(cfg, B, S),
                                cache_index=0, logits_at=P - 1)
    keys = jax.random.split(key, N)          # one key per new token: a seed fixes the sample
    first, done = pick(logits[:, 0], keys[0], jnp.zeros((B,), bool))

    cache = heads_major(cache)               # laid out once for the loop, as are the weights

    def step(carry, xs):                     # feed token i (at index P + i), sample token i + 1
        cache, tok, done = carry
        i, key = xs
        index = P + i
        logits, cache = decode_step(weights, cfg, tok, index - pad,
                                    decode_mask(pad, index[None], S)[:, 0, 0], cache, index)
        new, done = pick(logits, key, done)
        return (cache, new, done), (new, logits if return_logits else None)

    _, (rest, rest_logits) = jax.lax.scan(step, (cache, first, done),
                                          (jnp.arange(N - 1), keys[1:]))
    out = jnp.concatenate([first[:, None], rest.T], axis=1)                   # (B, N)
    if not return_logits:
        return out
    return out, jnp.concatenate([logits, jnp.swapaxes(rest_logits, 0, 1)], axis=1)  # (B, N, V)


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


def generate(params, cfg: GPTConfig, prompts, max_new_tokens: int = 64, key=None, *,
             temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, eos_id: Optional[int] = None,
             return_logits: bool = False):
    """Continue each prompt by max_new_tokens tokens: int32 (B, max_new_tokens).

    prompts: a list of prompts, each a list (or 1-D array) of int token ids, lengths may differ;
    or an int array (B, T). Ids are ints in [0, cfg.vocab_size): floats are refused, never
    rounded, and a flat list of ints is refused too (pass [[1, 2, 3]] for one prompt).
    key: a jax PRNG key (default key(0)) or an int seed in [0, 2**32), the same as
    jax.random.key(seed); the same key gives the same sample.
    temperature >= 0: 0 (or top_k=1) is greedy; a tiny temperature tends to greedy without
    overflow; inf samples uniformly among the tokens top_k keeps (all of them without top_k),
    and top_p then keeps them all (they are equally likely). top_k: int >= 1; top_p in (0, 1].
    eos_id: an id in [0, cfg.n_real_vocab); after a row emits it, the rest of that row is eos_id.
    Compiled once per (batch, bucketed prompt length, max_new_tokens, greedy or not, top_k or
    not, top_p or not).
    return_logits: also return the float32 (B, max_new_tokens, V) logits each token was drawn
    from (before temperature and filters).

    Bad input raises a UserError before anything is compiled or allocated: PromptTooLongError
    when prompt + max_new_tokens exceeds block_size, DecodeMemoryError when the KV cache and
    logits would not fit in the memory available (split the prompts into smaller calls),
    TokenError for ids that are not ints in range.
    """
    args, static = decode_args(params, cfg, prompts, max_new_tokens, key=key,
                               temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id,
                               return_logits=return_logits)
    return _decode(*args, **static)


def decode_args(params, cfg: GPTConfig, prompts, max_new_tokens: int, *, key=None,
                temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, eos_id: Optional[int] = None,
                return_logits: bool = False) -> tuple[tuple, dict]:
    """Checked and padded inputs of the compiled decoder: generate() is _decode(*args, **static);
    callers that time compilation apart use _decode.lower(*args, **static).compile()(*args).
    Every check runs on the host, on Python and numpy values, before any device work."""
    if not isinstance(cfg, GPTConfig):
        raise UserError(f"cfg must be a gpt_jax.GPTConfig, got {type(cfg).__name__}")
    max_new_tokens = check_max_new_tokens(max_new_tokens, cfg)
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    eos_id = check_eos_id(eos_id, cfg)
    if not isinstance(return_logits, (bool, np.bool_)):
        raise UserError(f"return_logits must be True or False, got {return_logits!r}")
    key = check_key(key)
    # A lower bound first (every prompt one token long), so an absurd batch is refused before
    # its rows are read; then the exact figure for the bucketed length.
    split = _mesh_rows(params)
    check_memory(cfg, _batch_size(prompts), bucket_length(1, cfg.block_size), max_new_tokens,
                 return_logits, split=split)
    rows = check_prompts(prompts, cfg, max_new_tokens)
    P = bucket_length(max(len(r) for r in rows), cfg.block_size)
    check_memory(cfg, len(rows), P, max_new_tokens, return_logits, split=split)
    tokens, pad = pad_rows(rows, cfg)
    greedy = temperature == 0 or top_k == 1
    use_top_k = not greedy and top_k is not None and top_k < cfg.n_real_vocab
    use_top_p = not greedy and top_p is not None and top_p < 1
    weights = decode_layout(params, cfg)     # checks that params match cfg when it makes one
    tokens, pad = _place_batch(params, tokens, pad)
    args = (params, weights, tokens, pad, key,
            np.float32(temperature if not greedy else 1.0),
            np.int32(top_k if use_top_k else 0),
            np.float32(top_p if use_top_p else 1.0),
            np.int32(-1 if eos_id is None else eos_id))
    static = dict(cfg=cfg, max_new_tokens=int(max_new_tokens), greedy=greedy,
                  use_top_k=use_top_k, use_top_p=use_top_p, return_logits=bool(return_logits))
    return args, static


# -- checks of generate()'s inputs (host-side: no device work, nothing retraced) --------------

def _scalar(x, integer: bool):
    """x as a Python int (integer) or float, or None where it is not such a number: bools and
    strings are not numbers here; 0-d numpy or jax arrays are."""
    if isinstance(x, (bool, np.bool_)):
        return None
    if integer and isinstance(x, numbers.Integral):
        return int(x)
    if not integer and isinstance(x, numbers.Real):
        return float(x)
    if isinstance(x, (np.ndarray, jax.Array)) and x.shape == () and jax.dtypes.issubdtype(
            x.dtype, np.integer if integer else np.number):  # (not a PRNG key's dtype)
        return int(x) if integer else float(x)
    return None


def check_max_new_tokens(max_new_tokens, cfg: GPTConfig) -> int:
    n = _scalar(max_new_tokens, integer=True)
    if n is None or n < 1:
        raise UserError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if n >= cfg.block_size:  # no room left for even a one-token prompt
        raise PromptTooLongError(
            f"max_new_tokens {n} leaves no room for a prompt in the model's block_size "
            f"{cfg.block_size}: ask for at most {cfg.block_size - 1} tokens")
    return n


def check_sampling(temperature, top_k, top_p) -> tuple[float, Optional[int], Optional[float]]:
    """(temperature, top_k, top_p) as Python numbers once each is of the right type and range:
    temperature >= 0 (inf allowed: uniform sampling), top_k an int >= 1, top_p in (0, 1]."""
    t = _scalar(temperature, integer=False)
    if t is None or not t >= 0:  # NaN fails too
        raise UserError(f"temperature must be a number >= 0 (0 is greedy), got {temperature!r}")
    k = None if top_k is None else _scalar(top_k, integer=True)
    if top_k is not None and (k is None or k < 1):
        raise UserError(f"top_k must be a positive integer (or None for no top-k), "
                        f"got {top_k!r}")
    p = None if top_p is None else _scalar(top_p, integer=False)
    if top_p is not None and (p is None or not 0 < p <= 1):
        raise UserError(f"top_p must be a number in (0, 1] (or None for no top-p), "
                        f"got {top_p!r}")
    return t, k, p


def check_eos_id(eos_id, cfg: GPTConfig) -> Optional[int]:
    """None, or an id the model can emit: an int in [0, n_real_vocab) (padded ids never are)."""
    if eos_id is None:
        return None
    e = _scalar(eos_id, integer=True)
    if e is None or not 0 <= e < cfg.n_real_vocab:
        raise UserError(f"eos_id must be None or a token id the model can emit, an integer in "
                        f"[0, {cfg.n_real_vocab}), got {eos_id!r}")
    return e


def check_key(key):
    """A jax PRNG key: key itself (one typed key, or a legacy uint32 key such as
    jax.random.PRNGKey(0)), jax.random.key(key) for an int seed, key(0) for None."""
    if key is None:
        return jax.random.key(0)
    seed = _scalar(key, integer=True)
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


def _batch_size(prompts) -> Optional[int]:
    """How many prompts, without reading them (None where that needs reading them)."""
    if isinstance(prompts, (list, tuple)):
        return len(prompts)
    shape = getattr(prompts, "shape", None)
    return int(shape[0]) if shape else None


# Refuse a decode whose estimate exceeds this fraction of the memory free: the estimate counts
# the large buffers only, and XLA's temporaries and the host's other work need room too.
MEMORY_FRACTION = 0.75
_CHECK_ABOVE = 256 << 20  # smaller decodes skip the check (no /proc read per call)


def decode_memory_bytes(cfg: GPTConfig, batch: int, prompt_len: int, max_new_tokens: int,
                        return_logits: bool = False) -> int:
    """Bytes one generate() call allocates beyond the weights (its large buffers: a lower
    bound of the peak), for `batch` prompts left-padded to prompt_len."""
    B, P, N = batch, prompt_len, max_new_tokens
    S = P + N - 1
    C, H, V = cfg.n_embd, cfg.n_head, cfg.vocab_size
    item = np.dtype(cfg.compute_dtype).itemsize
    cache = 2 * cfg.n_layer * B * S * C * item    # k and v of every layer
    # Twice: the prefill writes (B, S, H, D) caches that heads_major copies for the loop.
    total = 2 * cache
    total += B * P * 4 * C * item + 2 * B * H * P * S * 4   # prefill: MLP hidden, scores, probs
    total += 6 * B * V * 4                        # one step's logits and the filters' temporaries
    total += B * (P + N) * 4                      # prompts in, tokens out
    if return_logits:
        total += 2 * B * N * V * 4                # the stacked logits, then their concatenation
    return total


def available_memory_bytes() -> Optional[int]:
    """Bytes free for a decode: on an accelerator its allocator's limit less what is in use;
    on CPU the kernel's MemAvailable (psutil, or free pages, where /proc is absent).
    None when unknown."""
    dev = jax.local_devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def max_batch(cfg: GPTConfig, prompt_len: int, max_new_tokens: int,
              return_logits: bool = False, split: int = 1) -> Optional[int]:
    """The most prompts of (bucketed) length prompt_len one call can decode within
    MEMORY_FRACTION of the memory available (None when that is unknown)."""
    free = available_memory_bytes()
    if free is None:
        return None
    per_row = decode_memory_bytes(cfg, 1, prompt_len, max_new_tokens, return_logits)
    return int(MEMORY_FRACTION * free) // per_row * split


def check_memory(cfg: GPTConfig, batch: Optional[int], prompt_len: int, max_new_tokens: int,
                 return_logits: bool = False, split: int = 1) -> None:
    """Refuse, before any allocation, a decode whose KV cache and logits would not fit.
    split: devices the rows are spread over where they divide (each holds batch / split)."""
    if not batch:
        return
    rows = batch // split if batch % split == 0 else batch   # as _place_batch places them
    need = decode_memory_bytes(cfg, rows, prompt_len, max_new_tokens, return_logits)
    if need < _CHECK_ABOVE:
        return
    free = available_memory_bytes()
    if free is None or need <= MEMORY_FRACTION * free:
        return
    fit = max_batch(cfg, prompt_len, max_new_tokens, return_logits, split) or 0
    what = f"{batch} prompts x {prompt_len + max_new_tokens - 1} positions"
    todo = (f"split the prompts into calls of at most {fit}" if fit >= 1 else
            "ask for fewer tokens (max_new_tokens) or use a smaller model")
    raise DecodeMemoryError(
        f"generate() would need about {format_gib(need)} for {what} (KV cache and logits"
        f"{', return_logits' if return_logits else ''}) but {format_gib(free)} is available "
        f"(at most {MEMORY_FRACTION:.0%} of it is used): {todo}")


def format_gib(n: float) -> str:
    """Bytes as "1.5 GiB" (or MiB below one GiB)."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


_layout = None  # (weak references to the params' leaves, cfg, their decode layout): the last one


def decode_layout(params, cfg: GPTConfig):
    """The weights as decode_step reads them (model.decode_weights), made once per params.

    On CPU that is a transposed copy of the Dense kernels (~70% of the weights; 0.1 s for GPT-2
    small), and in a bfloat16 run a bfloat16 copy. The last one made is kept while its params
    live, so repeated generate() calls with the same params skip the work. Only immutable jax
    Arrays are cached (numpy arrays could change in place)."""
    global _layout
    leaves = jax.tree_util.tree_leaves(params)
    if _layout is not None:
        refs, for_cfg, weights = _layout
        if for_cfg == cfg and len(refs) == len(leaves) and \
                all(r() is x for r, x in zip(refs, leaves)):
            return weights
    _layout = None                           # free the old copy before making the new one
    check_params(params, cfg)                # once per params: a hit above was checked before
    weights = decode_weights(params, cfg)    # op by op: leaves it keeps are not copied
    if all(isinstance(x, jax.Array) for x in leaves):
        def forget(_):                       # a leaf died: so did these params
            global _layout
            if _layout is not None and _layout[2] is weights:
                _layout = None
        _layout = ([weakref.ref(x, forget) for x in leaves], cfg, weights)
    return weights


def _sharding(params):
    """The sharding of the params' (first) leaf, None without one: wte's embedding where
    params are GPT-2's dict (no flattening of the whole tree per call)."""
    try:
        leaf = params["wte"]["embedding"]
    except (KeyError, TypeError, IndexError):
        leaves = jax.tree_util.tree_leaves(params)
        leaf = leaves[0] if leaves else None
    return getattr(leaf, "sharding", None)


def _mesh_rows(params) -> int:
    """How many devices _place_batch would spread the rows over (an upper bound: rows that do
    not divide stay replicated; 1 without a mesh)."""
    sharding = _sharding(params)
    return sharding.mesh.size if isinstance(sharding, jax.sharding.NamedSharding) else 1


def _place_batch(params, tokens, pad):
    """With parameters on a mesh (sharded over fsdp or replicated over data), split the prompt
    rows over its devices too, so each decodes its own rows; otherwise leave them as they are."""
    sharding = _sharding(params)
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return tokens, pad
    mesh = sharding.mesh
    if tokens.shape[0] % mesh.size:
        return tokens, pad  # rows that do not divide stay replicated
    rows = jax.sharding.PartitionSpec(tuple(mesh.axis_names))
    return (jax.device_put(tokens, jax.sharding.NamedSharding(mesh, rows)),
            jax.device_put(pad, jax.sharding.NamedSharding(mesh, rows)))


# -- the reference: no cache, a full forward pass per new token (for tests and bench.py) -------

@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def generate_uncached(params, tokens, pad, *, cfg: GPTConfig, max_new_tokens: int):
    """Greedy decoding that recomputes the whole (fixed-length, left-padded) sequence for every
    token: what the cache saves. tokens (B, P) and pad (B,) as from left_pad()."""
    B, P = tokens.shape
    S = P + max_new_tokens - 1
    seq = jnp.zeros((B, S), jnp.int32).at[:, :P].set(tokens)
    idx = jnp.arange(S)
    positions = jnp.maximum(idx[None, :] - pad[:, None], 0)
    mask = decode_mask(pad, idx, S)

    def step(seq, i):                        # position P - 1 + i predicts the token at P + i
        logits = GPT(cfg).apply({"params": params}, seq, positions=positions, mask=mask,
                                logits_at=P - 1 + i)
        tok = first_argmax(logits[:, 0])  # the model's padded ids are -1e9 already
        seq = jax.lax.dynamic_update_slice(seq, tok[:, None], (0, jnp.minimum(P + i, S - 1)))
        return seq, tok

    _, toks = jax.lax.scan(step, seq, jnp.arange(max_new_tokens))
    return toks.T                            # (B, max_new_tokens)
