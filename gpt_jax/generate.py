"""Sampling filters and a compiled decoder: prefill in one pass, then lax.scan over a KV cache.

generate() is one jitted program per static shape: the prompt batch is left-padded to a bucket
length P (a power of two), so every row's last prompt token sits at index P-1 and all rows write
the cache at the same index each step. Per-row positions (index - row padding) and an explicit
mask (keys from the row's first real token up to the query) make each row compute exactly what it
would alone. The cache, preallocated for P + max_new_tokens - 1 entries, is updated in place with
dynamic_update_slice inside the scan carry: no Python loop over tokens, no growing concatenation.
The prefill fills per-layer (B, S, H, D) caches (init_cache); the loop keeps them heads-major,
(B*H, S, D), the layout in which XLA reads them without a copy per step (model.heads_major).
"""
from __future__ import annotations

import functools
import weakref
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.config import GPTConfig
from gpt_jax.errors import UserError
from gpt_jax.model import (GPT, KVCache, decode_step, decode_weights, heads_major,
                           mask_vocab)


class PromptTooLongError(UserError, ValueError):
    """prompt length + max_new_tokens does not fit the model's block_size."""


# -- sampling filters: pure functions of (..., V) float32 logits ------------------------------

def apply_temperature(logits, temperature):
    """Divide by temperature > 0 (lower: sharper; temperature 0 is greedy, handled apart)."""
    return logits / temperature


def top_k_filter(logits, k: int):
    """Keep the k largest logits, -inf elsewhere (ties with the k-th all survive): a logit stays
    when fewer than k logits are strictly larger."""
    return jnp.where(_keep_above(logits, jnp.int32(1), k), logits, -jnp.inf)


def top_p_filter(logits, p):
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p (ties
    with the last one all survive): a logit stays when the tokens strictly more likely than it
    hold less than p of the probability."""
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
    """int32 (...,) token ids from (..., V) logits: temperature, then top-k, then top-p.

    greedy (static) is argmax and skips everything else; top_k and top_p (None skips either)
    are the optional filters; both may be traced values.
    """
    if greedy:
        return first_argmax(logits)
    logits = apply_temperature(logits.astype(jnp.float32), temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
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
    """(tokens int32 (B, P), pad int32 (B,)): prompts right-aligned in a bucket of length P."""
    if isinstance(prompts, (list, tuple)):
        rows = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    else:
        arr = np.asarray(prompts)
        if arr.ndim != 2:
            raise UserError(f"prompts must be a list of token lists or an int array (B, T), "
                            f"got an array of shape {arr.shape}")
        rows = list(arr.astype(np.int64))
    if not rows or any(len(r) == 0 for r in rows):
        raise UserError("every prompt needs at least one token (e.g. <|endoftext|>)")
    for r in rows:
        bad = r[(r < 0) | (r >= cfg.vocab_size)]
        if bad.size:
            raise UserError(f"prompt token id {int(bad[0])} is outside the model's vocabulary "
                            f"(vocab_size {cfg.vocab_size})")
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

    prompts: list of token lists (lengths may differ) or an int array (B, T). key: a jax PRNG
    key (default key(0)); the same key gives the same sample. temperature 0 (or top_k=1) is
    greedy. After a row emits eos_id, the rest of that row is eos_id. Compiled once per (batch,
    bucketed prompt length, max_new_tokens, greedy or not, top_k or not, top_p or not).
    return_logits: also return the float32 (B, max_new_tokens, V) logits each token was drawn
    from (before temperature and filters).
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
    callers that time compilation apart use _decode.lower(*args, **static).compile()(*args)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
            or max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if temperature is None or not temperature >= 0:
        raise UserError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
        raise UserError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"top_p must be in (0, 1], got {top_p!r}")
    tokens, pad = left_pad(prompts, cfg)
    longest = tokens.shape[1] - int(pad.min())
    if longest + max_new_tokens > cfg.block_size:
        raise PromptTooLongError(
            f"prompt length {longest} + max_new_tokens {max_new_tokens} = "
            f"{longest + max_new_tokens} exceeds the model's block_size {cfg.block_size}: "
            f"shorten the prompt or ask for fewer tokens")
    greedy = temperature == 0 or top_k == 1
    use_top_k = not greedy and top_k is not None and top_k < cfg.n_real_vocab
    use_top_p = not greedy and top_p is not None and top_p < 1
    key = jax.random.key(0) if key is None else key
    tokens, pad = _place_batch(params, tokens, pad)
    args = (params, decode_layout(params, cfg), tokens, pad, key,
            np.float32(temperature if not greedy else 1.0), np.int32(top_k if use_top_k else 0),
            np.float32(top_p if use_top_p else 1.0), np.int32(-1 if eos_id is None else eos_id))
    static = dict(cfg=cfg, max_new_tokens=int(max_new_tokens), greedy=greedy,
                  use_top_k=use_top_k, use_top_p=use_top_p, return_logits=return_logits)
    return args, static


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
    weights = decode_weights(params, cfg)    # op by op: leaves it keeps are not copied
    if all(isinstance(x, jax.Array) for x in leaves):
        def forget(_):                       # a leaf died: so did these params
            global _layout
            if _layout is not None and _layout[2] is weights:
                _layout = None
        _layout = ([weakref.ref(x, forget) for x in leaves], cfg, weights)
    return weights


def _place_batch(params, tokens, pad):
    """With parameters on a mesh (sharded over fsdp or replicated over data), split the prompt
    rows over its devices too, so each decodes its own rows; otherwise leave them as they are."""
    sharding = getattr(jax.tree_util.tree_leaves(params)[0], "sharding", None)
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
