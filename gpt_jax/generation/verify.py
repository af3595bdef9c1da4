"""Speculative decoding's verification: T tokens per row through the model in one forward over
the KV cache, each row at its own cache index, and the rules that accept a prefix of them.

extend_step is decode_step (gpt_jax/generation/step.py) for T tokens a row: the last accepted
token plus K proposals are written into the cache at the row's length and attend, through an
explicit mask, to the keys from the row's first real token up to themselves. Keys past a query
are never read, so cache entries of proposals that a step rejects (left behind when the row's
length moves back) are harmless: the next step overwrites them before any query can see them.

The acceptance rules: greedy keeps the proposals up to the first that differs from the target's
argmax, then the target's own token (transformers 5.24.0, generation/utils.py:4145-4148);
sampling is speculative sampling (Leviathan et al. 2023, algorithm 1; Chen et al. 2023):
accept proposal x with probability min(1, p(x) / q(x)), on the first rejection draw from
norm(max(0, p - q)), after K acceptances draw the bonus token from p. The tokens come out
distributed as p alone would draw them, whatever q is. A proposal without a distribution
(prompt lookup) is q = one-hot: accepted with probability p(x), else a draw from p without x,
which is what transformers does there (utils.py:4130-4146: sample from p, keep while equal).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax.generation.sampling import (apply_temperature, first_argmax, top_k_filter,
                                         top_p_filter)
from gpt_jax.generation.step import embed, linear, lm_head
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import layer_norm
from gpt_jax.model.ops import cpu_layouts


def write_rows(cache, new, index):
    """cache (B*H, S, D) heads-major with new (B, H, T, D) written at index (B,), per row."""
    B, H, T, D = new.shape
    rows = cache.reshape(B, H, -1, D)
    put = lambda c, x, i: jax.lax.dynamic_update_slice(c, x.astype(c.dtype), (0, i, 0))
    return jax.vmap(put)(rows, new, index).reshape(B * H, -1, D)


def extend_step(weights, cfg: GPTConfig, tokens, index, pad, kv_cache):
    """tokens (B, T) fed at cache indices index .. index + T - 1 (index (B,) per row), pad (B,)
    each row's left padding; weights as decode_step reads them (widened: T > 1 rows a product);
    kv_cache per layer (k, v), each (B*H, S, D). Returns (logits float32 (B, T, V), cache).

    Positions are the index less the padding, capped at block_size - 1: only tokens past
    max_new_tokens (which are dropped) can reach the cap, and no earlier query sees them."""
    dt, transposed = cfg.compute_dtype, cpu_layouts()
    B, T = tokens.shape
    H, D, C = cfg.n_head, cfg.head_dim, cfg.n_embd
    S = kv_cache[0][0].shape[1]
    at = index[:, None] + jnp.arange(T)[None, :]                          # (B, T) cache index
    positions = jnp.minimum(at - pad[:, None], cfg.block_size - 1)
    keys = jnp.arange(S)[None, None, :]
    mask = (keys >= pad[:, None, None]) & (keys <= at[:, :, None])        # (B, T, S)
    norm = lambda p, x: layer_norm(cfg).apply({"params": p}, x)
    x = embed(weights, cfg, tokens.reshape(-1), positions.reshape(-1))    # (B*T, C)
    new_cache = []
    for i in range(cfg.n_layer):
        p = weights[f"h_{i}"]
        post = cfg.norm == "post"
        qkv = linear(x if post else norm(p["ln_1"], x), p["attn"]["c_attn"], transposed)
        q, k, v = (a.reshape(B, T, H, D) for a in jnp.split(qkv, 3, axis=-1))
        k_cache = write_rows(kv_cache[i][0], k.transpose(0, 2, 1, 3), index)
        v_cache = write_rows(kv_cache[i][1], v.transpose(0, 2, 1, 3), index)
        new_cache.append((k_cache, v_cache))
        kc, vc = k_cache.reshape(B, H, S, D), v_cache.reshape(B, H, S, D)
        s = jnp.einsum("bthd,bhsd->bhts", q, kc,
                       preferred_element_type=jnp.float32) / math.sqrt(D)    # (B, H, T, S)
        s = jnp.where(mask[:, None], s, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(s, axis=-1).astype(dt)
        y = jnp.einsum("bhts,bhsd->bthd", probs, vc).reshape(B * T, C)
        x = x + linear(y, p["attn"]["c_proj"], transposed)
        x = norm(p["ln_1"], x) if post else x
        h = linear(x if post else norm(p["ln_2"], x), p["mlp"]["c_fc"], transposed)
        x = x + linear(nn.gelu(h, approximate=True), p["mlp"]["c_proj"], transposed)
        x = norm(p["ln_2"], x) if post else x
    x = norm(weights["ln_f"], x) if cfg.final_ln else x
    logits = lm_head(weights, cfg, x)                                     # (B*T, V)
    return logits.reshape(B, T, -1), tuple(new_cache)


def warp(logits, temperature, top_k=None, top_p=None):
    """The sampler's filters as sample_logits applies them (top-k, temperature, top-p):
    float32 (..., V) logits whose softmax is the distribution a draw is made from."""
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    logits = apply_temperature(logits, temperature)
    return logits if top_p is None else top_p_filter(logits, top_p)


def leading(ok):
    """(B,) how many of ok (B, K) bool hold before the first False."""
    return jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)


def accept_greedy(logits, proposed, n_proposed):
    """Greedy verification. logits (B, K+1, V) the target's at the last token and the K
    proposals (B, K), of which the first n_proposed (B,) are real. Returns (tokens (B, K+1),
    m (B,)): the row's new tokens are tokens[:, :m+1], the target's own argmax at each place
    (equal to the proposals where they were accepted)."""
    K = proposed.shape[1]
    best = first_argmax(logits)                                           # (B, K+1)
    ok = (proposed == best[:, :K]) & (jnp.arange(K)[None, :] < n_proposed[:, None])
    return best, leading(ok)


def accept_sampled(p_logits, q_probs, proposed, n_proposed, key):
    """Speculative sampling. p_logits (B, K+1, V) the target's warped logits (warp);
    q_probs (B, K, V) the distributions the proposals (B, K) were drawn from, None for
    deterministic ones (one-hot); the first n_proposed (B,) proposals are real.
    Returns (tokens (B, K+1), m (B,)): the row's new tokens are tokens[:, :m+1]."""
    B, K = proposed.shape
    k_accept, k_draw = jax.random.split(key)
    p = jax.nn.softmax(p_logits, axis=-1)                                 # (B, K+1, V)
    p_x = jnp.take_along_axis(p[:, :K], proposed[..., None], axis=-1)[..., 0]   # (B, K)
    q_x = 1.0 if q_probs is None else \
        jnp.take_along_axis(q_probs, proposed[..., None], axis=-1)[..., 0]
    u = jax.random.uniform(k_accept, (B, K))
    # u < p/q, written without the division (q(x) > 0 for any x q drew); p(x) = 0 never passes
    ok = (u * q_x < p_x) & (jnp.arange(K)[None, :] < n_proposed[:, None])
    m = leading(ok)                                                       # (B,)
    p_m = jnp.take_along_axis(p, m[:, None, None], axis=1)[:, 0]          # (B, V)
    at = jnp.minimum(m, K - 1)[:, None]
    if q_probs is None:
        x = jnp.take_along_axis(proposed, at, axis=1)                     # (B, 1)
        q_m = jax.nn.one_hot(x[:, 0], p.shape[-1], dtype=p.dtype)
    else:
        q_m = jnp.take_along_axis(q_probs, at[..., None], axis=1)[:, 0]
    rejected = (m < n_proposed)[:, None]      # else no proposal at m: draw from p itself
    resid = jnp.where(rejected, jnp.maximum(p_m - q_m, 0.0), p_m)
    # p == q up to rounding leaves no residual mass: p itself is then the same distribution
    resid = jnp.where(jnp.sum(resid, -1, keepdims=True) > 0, resid, p_m)
    g = jax.random.gumbel(k_draw, resid.shape)
    tok = first_argmax(jnp.where(resid > 0, jnp.log(resid) + g, -jnp.inf))   # (B,)
    padded = jnp.concatenate([proposed, proposed[:, :1]], axis=1)         # (B, K+1)
    tokens = jnp.where(jnp.arange(K + 1)[None, :] < m[:, None], padded, tok[:, None])
    return tokens, m
