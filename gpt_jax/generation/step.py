"""The one-token decode step over a KV cache, and the cache and weights laid out for it.

The same math as model.GPT for one new token per row, written out as a plain function so that
the weights' layout can suit a step that is one matrix-vector product per weight (decode_weights)
and the cache can stay heads-major (heads_major). The prefill (prefill) runs GPT itself over
the whole prompt, writing a (B, P, H, D) cache from init_cache that it lays out heads-major
and pads to the loop's length once; the loops (decode_loop.py, beam.py) then run decode_step.
Tests check the step against GPT's full forward pass.

A step reads every weight once per token, so at batch 1 it runs at the speed weights stream
from memory. decode_weights can store the products' weights narrower than the compute dtype
(WEIGHT_FORMATS: bfloat16, or int8 with a float32 scale per output channel, see quantize_int8);
a one-row step widens each right inside its product (XLA:CPU fuses the conversion into a
matrix-vector product), so the loop reads the narrow bytes. With more rows a step is
compute-bound and that fused product is slow, so the loop widens them once before it starts
(widened): the same numbers, at the wide speed.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpt_jax.generation.cache_attention import cache_attention
from gpt_jax.model.config import DTYPES, GPTConfig
from gpt_jax.model.gpt import GPT, layer_norm, mask_padded_vocab
from gpt_jax.model.ops import cpu_layouts

# decode_step reads Dense kernels transposed, as (out, in), rather than in flax's (in, out)
# where cpu_layouts(): on XLA:CPU a matrix-vector product streams W (out, in) @ x faster than
# x @ W (in, out), and a decode step is nothing but such products.

# How decode_weights may store the Dense kernels and the token embedding (the tied head): the
# bytes a step streams. None in the API means the compute dtype (cfg.dtype).
WEIGHT_FORMATS = ("float32", "bfloat16", "int8")

# Vocabulary rows per product when the head is narrow: XLA:CPU fuses the conversion into a
# product of this size, not into one over all 50257 rows (it widens the whole (V, C) first).
HEAD_ROWS = 8192

# The (V, C) matrices whose rows are the head's outputs: wte (tied, GPT-2) or lm_head (untied).
HEADS = ("wte", "lm_head")

KVCache = tuple  # per layer: (k, v), each (B, S, n_head, head_dim), or (B*H, S, D) heads-major


class CountedJit:
    """fn jitted with its static_argnames, counting its traces: one program per static shape,
    so a caller can see that calls with shapes seen before reused their program (generate's
    Decoder and beam search's BEAMS)."""

    def __init__(self, fn, static_argnames, donate_argnames=()):
        self.trace_count = 0

        @functools.wraps(fn)  # its signature: jit reads the static names from it
        def counted(*args, **static):
            self.trace_count += 1
            return fn(*args, **static)
        self._jitted = jax.jit(counted, static_argnames=static_argnames,
                               donate_argnames=donate_argnames)

    def run(self, *args, **static):
        return self._jitted(*args, **static)

    def lower(self, *args, **static):
        """jax's Lowered program for these arguments (compile it to run it ahead of time)."""
        return self._jitted.lower(*args, **static)


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


def quantize_int8(w, axis: int):
    """(q int8, scale float32): w ~= q * scale, symmetric, one scale per slice along the other
    axes (reduced over `axis`, the input axis: one scale per output channel). |q| <= 127, so
    each weight is off by at most scale / 2; an all-zero channel gets scale 1 (q = 0)."""
    w = jnp.asarray(w, jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=axis, keepdims=True)
    scale = jnp.where(amax > 0, amax / 127, 1.0)
    q = jnp.clip(jnp.round(w / scale), -127, 127).astype(jnp.int8)
    return q, jnp.squeeze(scale, axis)


def decode_weights(params, cfg: GPTConfig, weights: str | None = None) -> dict:
    """params laid out as decode_step reads them: kernels as (out, in) where cpu_layouts();
    biases and wpe in the compute dtype (cast once, so a bfloat16 run streams half the bytes per
    token); Dense kernels and wte, most of the bytes, stored as `weights` (WEIGHT_FORMATS; None:
    the compute dtype). "int8" stores each as int8 with a float32 "scale" beside it, one per
    output channel (per vocabulary row for wte, which is also the tied head). Leaves that need
    no change are returned as they are, not copied."""
    if weights is not None and weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS} or None, got {weights!r}")
    fmt = weights or cfg.dtype
    dt = cfg.compute_dtype
    transposed = cpu_layouts()

    def store(x, out_axis: int) -> dict:  # a kernel or wte -> {"w", maybe "scale"}
        if fmt == "int8":
            q, scale = quantize_int8(x, axis=1 - out_axis)
            return {"w": q, "scale": scale}
        return {"w": widen(x, jnp.dtype(DTYPES[fmt]))}

    def lay(tree, name=None):
        if not isinstance(tree, dict):
            return widen(tree, dt) if name == "bias" else tree
        if "kernel" in tree:                      # a Dense: kernel (in, out), maybe bias
            k = tree["kernel"]
            k = k.T if transposed else k
            out = store(k, out_axis=0 if transposed else 1)
            kernel = {"kernel": out.pop("w"), **out}
            return {**kernel, **{n: widen(v, dt) for n, v in tree.items() if n != "kernel"}}
        if name in HEADS:                         # (V, C): rows are the head's outputs
            out = store(tree["embedding"], out_axis=0)
            return {"embedding": out.pop("w"), **out}
        if "embedding" in tree:                   # wpe: one row a step
            return {**tree, "embedding": widen(tree["embedding"], dt)}
        return {n: lay(v, n) for n, v in tree.items()}
    out = lay(params)
    if fmt != cfg.dtype:
        # A runtime 1 that a narrow product's input is divided by. XLA counts a divide as
        # expensive and so computes that input once, instead of re-deriving it (a LayerNorm,
        # say) inside the fused product for every weight it multiplies.
        out["one"] = jnp.ones((), dt)
    return out


def widened(weights: dict, dt) -> dict:
    """decode_weights' output with every narrow leaf widened to dt (int8 scales kept, so the
    step computes the same numbers): for steps of several rows, done once before the loop."""
    def wide(path, x):
        return x.astype(dt) if path[-1].key in ("kernel", "embedding") and x.dtype != dt else x
    return jax.tree_util.tree_map_with_path(wide, {k: v for k, v in weights.items()
                                                   if k != "one"})


def rounded_params(params, weights: dict, cfg: GPTConfig):
    """params with the Dense kernels and wte as decode_weights rounded them (for narrow
    formats; params themselves otherwise), in params' layout and the compute dtype: what the
    prefill reads, so that one generate() call runs one model."""
    if "one" not in weights:
        return params
    dt, transposed = cfg.compute_dtype, cpu_layouts()

    def wide(w, scale, out_axis: int):
        w = widen(w, dt)
        return w if scale is None else w * jnp.expand_dims(scale, 1 - out_axis).astype(dt)

    def lay(tree, stored, name=None):
        if not isinstance(tree, dict):
            return tree
        if "kernel" in tree:                   # stored (out, in) where transposed
            k = wide(stored["kernel"], stored.get("scale"), out_axis=0 if transposed else 1)
            return {**tree, "kernel": k.T if transposed else k}
        if name in HEADS:
            return {**tree, "embedding": wide(stored["embedding"], stored.get("scale"), 0)}
        return {n: lay(v, stored[n], n) for n, v in tree.items()}
    return lay(params, weights)


def weight_bytes(weights: dict) -> int:
    """Bytes of the leaves a decode step streams (all of decode_weights' output but wpe, of
    which a step reads one row)."""
    return sum(x.nbytes for path, x in jax.tree_util.tree_leaves_with_path(weights)
               if path[0].key != "wpe")


def widen(w, dt):
    """w in dtype dt (a no-op, no copy, when it already is): a stored weight widened to the
    compute dtype, or a parameter cast for storage."""
    return w if w.dtype == dt else jnp.asarray(w, dt)


def linear(x, p, transposed: bool, one=None):
    """x (B, in) -> (B, out); p["kernel"] is (in, out), or (out, in) when transposed, in the
    compute dtype or narrower (with p["scale"] (out,) for int8: the product is scaled after).
    one: decode_weights' runtime 1, for narrow kernels."""
    dt = x.dtype
    w = p["kernel"]
    if w.dtype != dt:
        # Widened inside the product, which XLA:CPU then fuses into one pass over the narrow
        # rows. The barriers tie w to x, which changes every step, so XLA does not hoist the
        # widening out of the decode loop (it is loop-invariant: the loop would stream a wide
        # copy), and keep the scale and bias out of the product's fusion (with them in, the
        # widening is not fused).
        w, x = jax.lax.optimization_barrier((w, x))
        x = x / one if one is not None else x
        y = jax.lax.optimization_barrier(x @ widen(w, dt).T if transposed else x @ widen(w, dt))
    elif transposed:
        # The barrier keeps XLA from folding the transpose into the dot (and so back into the
        # slow (B, out) orientation); the transpose left is of a (out, B) activation: cheap.
        y = jax.lax.optimization_barrier(w @ x.T).T
    else:
        y = x @ w
    if "scale" in p:
        y = (y * p["scale"]).astype(dt)
    return y + p["bias"] if "bias" in p else y


def heads_major(kv_cache: KVCache) -> KVCache:
    """(B, S, H, D) cache -> (B*H, S, D), the layout decode_step reads and writes.

    With the heads in the batch dimensions of its einsums, attention over the cache is a batched
    matrix-vector product that XLA runs in place. Over (B, S, H, D) XLA:CPU copies both caches
    into that order every step (and a (B, H, S, D) cache reshaped for the dot duplicates the
    in-place updates)."""
    return tuple(tuple(a.transpose(0, 2, 1, 3).reshape(-1, a.shape[1], a.shape[3]) for a in kv)
                 for kv in kv_cache)


def prefill(params, weights: dict, cfg: GPTConfig, tokens, pad, length: int, copies: int = 1):
    """The prompts' one pass before the decode loop: (logits (B, 1, V) at the last prompt
    index, the heads-major cache (B*copies*H, length, D) holding the prompts' keys and values at
    [:P], zeros after; each prompt's rows repeated `copies` times, for beam search's beams).

    tokens (B, P) left-padded with pad (B,) as from left_pad; params and weights as for
    decode_step (rounded_params: the prefill reads what the loop reads). The pass runs over a
    cache of the prompt's own P entries, since its queries see nothing later, so its attention
    and its one layout change touch P entries, not length: (B, length, H, D) caches cost
    gpt2 at batch 4 and 512 new tokens about 200 ms of transposing zeros, 20 decode steps."""
    B, P = tokens.shape
    idx = jnp.arange(P)
    positions = jnp.maximum(idx[None, :] - pad[:, None], 0)                    # (B, P)
    logits, cache = GPT(cfg).apply({"params": rounded_params(params, weights, cfg)}, tokens,
                                   positions=positions, mask=decode_mask(pad, idx, P),
                                   kv_cache=init_cache(cfg, B, P), cache_index=0,
                                   logits_at=P - 1)

    def lay(a):                                # (B, P, H, D) -> (B*copies*H, length, D)
        a = jnp.repeat(a.transpose(0, 2, 1, 3), copies, axis=0)   # (B*copies, H, P, D)
        a = jnp.pad(a, ((0, 0), (0, 0), (0, length - P), (0, 0)))
        return a.reshape(-1, length, a.shape[-1])
    return logits, tuple((lay(k), lay(v)) for k, v in cache)


def decode_step(weights, cfg: GPTConfig, tokens, positions, mask, kv_cache: KVCache,
                cache_index):
    """One new token per row, with weights from decode_weights(params); cfg.norm and
    cfg.tie_embeddings as GPT computes them (a KV cache needs cfg.causal: generate checks).
    tokens, positions (B,); mask (B, S) bool over the cache;
    kv_cache: per layer (k, v), each (B*H, S, D) (see heads_major).
    Returns (logits float32 (B, V), new cache). Attention reads the cache's first
    cache_index + 1 entries on CPU (cache_attention.py), else all S."""
    transposed = cpu_layouts()
    B, H, D = tokens.shape[0], cfg.n_head, cfg.head_dim
    norm = lambda p, x: layer_norm(cfg).apply({"params": p}, x)
    x = embed(weights, cfg, tokens, positions)                            # (B, C)
    one = weights.get("one")
    new_cache = []
    for i in range(cfg.n_layer):
        p = weights[f"h_{i}"]
        post = cfg.norm == "post"                 # ln(x + f(x)) rather than x + f(ln(x))
        qkv = linear(x if post else norm(p["ln_1"], x), p["attn"]["c_attn"], transposed, one)
        q, k, v = (a.reshape(B, H, D) for a in jnp.split(qkv, 3, axis=-1))
        k_cache, v_cache = kv_cache[i]
        start = (0, cache_index, 0)
        k_cache = jax.lax.dynamic_update_slice(
            k_cache, k.reshape(B * H, 1, D).astype(k_cache.dtype), start)
        v_cache = jax.lax.dynamic_update_slice(
            v_cache, v.reshape(B * H, 1, D).astype(v_cache.dtype), start)
        new_cache.append((k_cache, v_cache))
        y = cache_attention(cfg, q.reshape(B * H, D), k_cache, v_cache, mask,
                            cache_index + 1).reshape(B, cfg.n_embd)
        x = x + linear(y, p["attn"]["c_proj"], transposed, one)
        x = norm(p["ln_1"], x) if post else x
        h = linear(x if post else norm(p["ln_2"], x), p["mlp"]["c_fc"], transposed, one)
        x = x + linear(nn.gelu(h, approximate=True), p["mlp"]["c_proj"], transposed, one)
        x = norm(p["ln_2"], x) if post else x
    x = norm(weights["ln_f"], x) if cfg.final_ln else x
    return lm_head(weights, cfg, x), tuple(new_cache)


def embed(weights, cfg: GPTConfig, tokens, positions):
    """(N, C) in the compute dtype: token plus position embeddings of tokens, positions (N,)
    (decode_step's rows, or the verify step's rows x tokens flattened)."""
    wte = weights["wte"]["embedding"]                                     # (V, C)
    x = widen(wte[tokens], cfg.compute_dtype)                             # (N, C)
    if "scale" in weights["wte"]:
        x = (x * weights["wte"]["scale"][tokens][:, None]).astype(cfg.compute_dtype)
    return x + weights["wpe"]["embedding"][positions]


def lm_head(weights, cfg: GPTConfig, x):
    """float32 (N, V) logits of the final-normed activations x (N, C), padded ids masked."""
    one = weights.get("one")
    # The head: wte (tied) or lm_head, (V, C), is already the (out, in) orientation.
    head = "wte" if cfg.tie_embeddings else "lm_head"
    wte = weights[head]["embedding"]
    if wte.dtype != cfg.compute_dtype:
        logits = jnp.concatenate([linear(x, {"kernel": wte[r:r + HEAD_ROWS]}, True, one)
                                  for r in range(0, wte.shape[0], HEAD_ROWS)], axis=-1)
        logits = logits.astype(jnp.float32)
    elif cpu_layouts():
        logits = jax.lax.optimization_barrier(
            jnp.einsum("vc,bc->vb", wte, x, preferred_element_type=jnp.float32)).T
    else:
        logits = jnp.einsum("bc,vc->bv", x, wte, preferred_element_type=jnp.float32)
    if "scale" in weights[head]:
        logits = logits * weights[head]["scale"]
    return mask_padded_vocab(logits, cfg)
