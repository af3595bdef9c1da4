"""Sampling filters: pure functions of (..., V) float32 logits, jittable, with traced settings.

sample_logits applies top-k, then temperature, then top-p, and draws; greedy decoding is
first_argmax. The top-k and top-p thresholds are found by bisection over float32 values rather
than by sorting: on XLA:CPU a sort or lax.top_k over GPT-2's 50257 logits costs many times the
32 masked sums of the bisection, every decode step.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


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
    bisecting over the 2^32 float32 values in 32 steps of one masked sum each (no sort: see the
    module docstring)."""
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


def min_p_filter(logits, min_p):
    """Min-p (transformers' MinPLogitsWarper): keep the ids whose probability is at least
    min_p times the most likely one's (which always stays), -inf elsewhere."""
    probs = jax.nn.softmax(logits, axis=-1)
    keep = probs >= min_p * jnp.max(probs, axis=-1, keepdims=True)
    keep |= logits == jnp.max(logits, axis=-1, keepdims=True)
    return jnp.where(keep, logits, -jnp.inf)


def first_argmax(logits):
    """argmax over the last axis (the first index of the maximum), as int32.

    Two plain reductions (max, then the smallest index holding it) instead of argmax's
    (value, index) reduction, which XLA:CPU does not vectorise; it runs every decode step."""
    V = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(logits == top, jnp.arange(V, dtype=jnp.int32), V), axis=-1)
    return jnp.minimum(first, V - 1)  # NaN logits match nothing: stay a valid id


def sample_logits(logits, key, *, temperature=1.0, top_k: Optional[int] = None, top_p=None,
                  greedy: bool = False, min_p=None):
    """int32 (...,) token ids from (..., V) logits: top-k, then temperature, then top-p, then
    min-p (None skips it).

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
    if min_p is not None:
        logits = min_p_filter(logits, min_p)
    # jax.random.categorical's Gumbel-max draw (the same noise, so the same samples), with the
    # vectorised first_argmax in place of its argmax.
    return first_argmax(logits + jax.random.gumbel(key, logits.shape, logits.dtype))
