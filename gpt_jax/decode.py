"""The one-token decode step over a KV cache, and the cache and weights laid out for it.

The same math as model.GPT for one new token per row, written out as a plain function so that
the weights' layout can suit a step that is one matrix-vector product per weight (decode_weights)
and the cache can stay heads-major (heads_major). The prefill runs GPT itself over the whole
prompt, writing a (B, S, H, D) cache from init_cache; generation.py converts it once and loops
decode_step. Tests check the step against GPT's full forward pass.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax.config import GPTConfig
from gpt_jax.model import layer_norm, mask_padded_vocab

KVCache = tuple  # per layer: (k, v), each (B, S, n_head, head_dim), or (B*H, S, D) heads-major


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


def kernels_out_in() -> bool:
    """Whether decode_step reads Dense kernels transposed, as (out, in), rather than in flax's
    (in, out): on XLA:CPU a matrix-vector product streams W (out, in) @ x faster than
    x @ W (in, out), and a decode step is nothing but such products."""
    return jax.default_backend() == "cpu"


def decode_weights(params, cfg: GPTConfig) -> dict:
    """params laid out as decode_step reads them: Dense kernels, biases and embeddings in the
    compute dtype (cast once, so a bfloat16 run streams half the bytes per token), and kernels
    as (out, in) where kernels_out_in(). Leaves that need neither are returned as they are, not
    copied."""
    transposed = kernels_out_in()

    def lay(path, x):
        name = path[-1].key
        if name in ("kernel", "bias", "embedding") and x.dtype != cfg.compute_dtype:
            x = jnp.asarray(x, cfg.compute_dtype)
        return x.T if transposed and name == "kernel" else x
    return jax.tree_util.tree_map_with_path(lay, params)


def linear(x, p, transposed: bool):
    """x (B, in) -> (B, out); p["kernel"] is (in, out), or (out, in) when transposed."""
    if transposed:
        # The barrier keeps XLA from folding the transpose into the dot (and so back into the
        # slow (B, out) orientation); the transpose left is of a (out, B) activation: cheap.
        y = jax.lax.optimization_barrier(p["kernel"] @ x.T).T
    else:
        y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def heads_major(kv_cache: KVCache) -> KVCache:
    """(B, S, H, D) cache -> (B*H, S, D), the layout decode_step reads and writes.

    With the heads in the batch dimensions of its einsums, attention over the cache is a batched
    matrix-vector product that XLA runs in place. Over (B, S, H, D) XLA:CPU copies both caches
    into that order every step (and a (B, H, S, D) cache reshaped for the dot duplicates the
    in-place updates)."""
    return tuple(tuple(a.transpose(0, 2, 1, 3).reshape(-1, a.shape[1], a.shape[3]) for a in kv)
                 for kv in kv_cache)


def decode_step(weights, cfg: GPTConfig, tokens, positions, mask, kv_cache: KVCache,
                cache_index):
    """One new token per row, with weights from decode_weights(params).
    tokens, positions (B,); mask (B, S) bool over the cache;
    kv_cache: per layer (k, v), each (B*H, S, D) (see heads_major).
    Returns (logits float32 (B, V), new cache)."""
    dt = cfg.compute_dtype
    transposed = kernels_out_in()
    B, H, D = tokens.shape[0], cfg.n_head, cfg.head_dim
    norm = lambda p, x: layer_norm(cfg).apply({"params": p}, x)
    wte = weights["wte"]["embedding"]                                     # (V, C)
    x = wte[tokens] + weights["wpe"]["embedding"][positions]              # (B, C)
    new_cache = []
    for i in range(cfg.n_layer):
        p = weights[f"h_{i}"]
        qkv = linear(norm(p["ln_1"], x), p["attn"]["c_attn"], transposed)
        q, k, v = (a.reshape(B, H, D) for a in jnp.split(qkv, 3, axis=-1))
        k_cache, v_cache = kv_cache[i]
        start = (0, cache_index, 0)
        k_cache = jax.lax.dynamic_update_slice(
            k_cache, k.reshape(B * H, 1, D).astype(k_cache.dtype), start)
        v_cache = jax.lax.dynamic_update_slice(
            v_cache, v.reshape(B * H, 1, D).astype(v_cache.dtype), start)
        new_cache.append((k_cache, v_cache))
        s = jnp.einsum("nd,nsd->ns", q.reshape(B * H, D), k_cache,
                       preferred_element_type=jnp.float32) / math.sqrt(D)    # (B*H, S)
        s = jnp.where(mask[:, None, :], s.reshape(B, H, -1), jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(s, axis=-1).astype(dt).reshape(B * H, -1)
        y = jnp.einsum("ns,nsd->nd", probs, v_cache).reshape(B, cfg.n_embd)
        x = x + linear(y, p["attn"]["c_proj"], transposed)
        h = linear(norm(p["ln_2"], x), p["mlp"]["c_fc"], transposed)
        x = x + linear(nn.gelu(h, approximate=True), p["mlp"]["c_proj"], transposed)
    x = norm(weights["ln_f"], x)
    # The tied head: wte (V, C) is already the (out, in) orientation.
    if transposed:
        logits = jax.lax.optimization_barrier(
            jnp.einsum("vc,bc->vb", wte, x, preferred_element_type=jnp.float32)).T
    else:
        logits = jnp.einsum("bc,vc->bv", x, wte, preferred_element_type=jnp.float32)
    logits = mask_padded_vocab(logits, cfg)
    return logits, tuple(new_cache)
