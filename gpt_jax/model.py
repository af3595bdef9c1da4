"""GPT-2 as flax.linen modules: CausalSelfAttention, MLP, Block, GPT.

Parameter names follow GPT-2's checkpoints (wte, wpe, h_0.., ln_1, attn.c_attn, attn.c_proj,
ln_2, mlp.c_fc, mlp.c_proj, ln_f). Flax's Dense kernel is (in, out), the same layout as GPT-2's
Conv1D weights, so Hugging Face tensors map over without transposes.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from gpt_jax.config import GPTConfig
from gpt_jax.errors import UserError

# Logit for padded vocab ids. Finite (not -inf) so that p * log p stays 0 rather than NaN.
PADDED_LOGIT = -1e9

KVCache = tuple  # per layer: (k, v), each (B, S, n_head, head_dim) in the compute dtype


def attention_implementation(cfg: GPTConfig) -> Optional[str]:
    """cuDNN's fused kernel on GPU in 16-bit (it rejects float32 and raises on CPU), else XLA."""
    if cfg.attn_impl == "xla":
        return None
    if cfg.attn_impl == "cudnn":
        return "cudnn"
    use_cudnn = jax.default_backend() == "gpu" and cfg.dtype in ("bfloat16", "float16")
    return "cudnn" if use_cudnn else None


def attention(q, k, v, mask=None, *, is_causal=False, implementation=None):
    """Scaled dot-product attention. q: (B, T, H, D); k, v: (B, S, H, D) -> (B, T, H, D).

    mask: bool, broadcastable to (B, H, T, S), True where a query may look. is_causal masks
    top-left (query i sees keys <= i), right only when T == S: a decode step at the end of a
    longer cache must pass an explicit mask instead. Softmax runs in float32 inside.
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                        implementation=implementation)


def attention_with_dropout(q, k, v, mask, dropout=lambda probs: probs):
    """The same function spelt out, so `dropout` (probs -> probs) can reach the attention
    probabilities: jax.nn.dot_product_attention has no dropout."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = jnp.einsum("bthd,bshd->bhts", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(logits, axis=-1))
    return jnp.einsum("bhts,bshd->bthd", probs.astype(v.dtype), v)


def mask_vocab(logits, n_valid: int, fill=-jnp.inf):
    """`fill` for the ids >= n_valid along the last axis (a no-op when there are none)."""
    if n_valid >= logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < n_valid, logits, fill)


def mask_padded_vocab(logits, cfg: GPTConfig):
    """PADDED_LOGIT for the ids >= n_real_vocab that only pad the embedding (a no-op when
    vocab_size is the tokenizer's): both the full forward and the decode step end here."""
    return mask_vocab(logits, cfg.n_real_vocab, PADDED_LOGIT)


def causal_mask(t: int, s: int | None = None):
    """(1, 1, T, S) bool: query i sees keys <= i (keys and queries aligned at the start)."""
    s = t if s is None else s
    return jnp.tril(jnp.ones((t, s), dtype=bool))[None, None]


def _dense(cfg: GPTConfig, features: int, name: str, std: float = 0.02) -> nn.Dense:
    return nn.Dense(features, use_bias=cfg.bias, dtype=cfg.compute_dtype,
                    param_dtype=cfg.storage_dtype, kernel_init=nn.initializers.normal(std),
                    bias_init=nn.initializers.zeros, name=name)


def _residual_std(cfg: GPTConfig) -> float:
    # GPT-2: each block adds two residual branches, so scale their output projections by
    # 1/sqrt(2 * n_layer) to keep the residual stream's variance independent of depth.
    return 0.02 / math.sqrt(2 * cfg.n_layer)


def _layer_norm(cfg: GPTConfig, name: str) -> nn.LayerNorm:
    # Flax computes LayerNorm statistics in float32 even for bfloat16 inputs.
    return nn.LayerNorm(epsilon=1e-5, use_bias=cfg.bias, dtype=cfg.compute_dtype,
                        param_dtype=cfg.storage_dtype, name=name)


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x, *, deterministic=True, mask=None, kv_cache=None, cache_index=None):
        """x: (B, T, C). Without a cache, plain causal attention over x.

        With kv_cache = (k, v), each (B, S, H, D): this call's keys and values are written at
        cache_index and the queries attend over the whole cache through `mask` (B, 1, T, S),
        which the caller builds (it knows the prompt padding). Returns (y, new_kv_cache).
        """
        cfg = self.config
        B, T, C = x.shape
        qkv = _dense(cfg, 3 * C, "c_attn")(x)
        q, k, v = (a.reshape(B, T, cfg.n_head, cfg.head_dim) for a in jnp.split(qkv, 3, -1))
        if kv_cache is not None:
            k_cache, v_cache = kv_cache
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), start)
            v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), start)
            kv_cache = (k, v)
        use_dropout = cfg.dropout > 0 and not deterministic
        if use_dropout:
            m = causal_mask(T) if mask is None else mask
            drop = nn.Dropout(cfg.dropout, deterministic=False)
            y = attention_with_dropout(q, k, v, m, drop)
        elif mask is None:
            y = attention(q, k, v, is_causal=True, implementation=attention_implementation(cfg))
        else:
            y = attention(q, k, v, mask=mask)
        y = _dense(cfg, C, "c_proj", _residual_std(cfg))(y.reshape(B, T, C))
        return y, kv_cache


class MLP(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        x = _dense(cfg, 4 * cfg.n_embd, "c_fc")(x)
        x = nn.gelu(x, approximate=True)  # GPT-2's "gelu_new" is the tanh approximation
        return _dense(cfg, cfg.n_embd, "c_proj", _residual_std(cfg))(x)


def constrain(x, sharding):
    """Pin activations (B, T, C) to `sharding` (a NamedSharding; None: no-op). Under FSDP this
    keeps the batch split over every device, so XLA all-gathers each weight where it is used
    rather than splitting the activations along the weight's sharded dimension."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    Arguments are positional-friendly so that nn.remat / nn.scan can lift the block
    (argument 2, `deterministic`, is a static Python bool).
    """
    config: GPTConfig
    activation_sharding: Any = None

    @nn.compact
    def __call__(self, x, deterministic=True, mask=None, kv_cache=None, cache_index=None):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout)
        y, kv_cache = CausalSelfAttention(cfg, name="attn")(
            _layer_norm(cfg, "ln_1")(x), deterministic=deterministic, mask=mask,
            kv_cache=kv_cache, cache_index=cache_index)
        x = x + drop(y, deterministic=deterministic)
        x = x + drop(MLP(cfg, name="mlp")(_layer_norm(cfg, "ln_2")(x)),
                     deterministic=deterministic)
        return constrain(x, self.activation_sharding), kv_cache


class GPT(nn.Module):
    """tokens int32 (B, T) -> logits float32 (B, T, vocab_size).

    positions (B, T) default to 0..T-1 (a decoder passes per-row positions for padded prompts).
    With kv_cache (a tuple of per-layer (k, v)) it returns (logits, new_kv_cache).
    logits_at (int or traced scalar): compute the logits of that one position only, (B, 1, V):
    a decoder needs just the next token's, and the tied head is the largest matmul there is.

    Run settings for big models (they change memory and compile time, never the function):
    remat recomputes each block's activations in the backward pass instead of storing them;
    scan_layers runs one compiled block n_layer times (nn.scan) over parameters stacked under
    "h" (see stack_layers / unstack_layers), so compile time stops growing with depth.
    activation_sharding (a NamedSharding for (B, T, C) activations, set by the train step on a
    mesh) pins the residual stream at block boundaries.
    """
    config: GPTConfig
    remat: bool = False
    scan_layers: bool = False
    activation_sharding: Any = None

    @nn.compact
    def __call__(self, tokens, *, deterministic=True, positions=None, mask=None, kv_cache=None,
                 cache_index=None, logits_at=None):
        cfg = self.config
        B, T = tokens.shape
        if T > cfg.block_size:
            raise TokenError(f"sequence length {T} exceeds the model's block_size "
                             f"{cfg.block_size}: pass at most {cfg.block_size} tokens")
        if positions is None:
            positions = jnp.arange(T)[None, :] + (0 if cache_index is None else cache_index)
        embed = functools.partial(nn.Embed, features=cfg.n_embd, dtype=cfg.compute_dtype,
                                  param_dtype=cfg.storage_dtype,
                                  embedding_init=nn.initializers.normal(0.02))
        wte = embed(cfg.vocab_size, name="wte")
        x = wte(tokens) + embed(cfg.block_size, name="wpe")(positions)
        x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
        x = constrain(x, self.activation_sharding)

        # prevent_cse=False: inside scan, XLA cannot merge the recomputation away anyway.
        block = (nn.remat(Block, static_argnums=(2,), prevent_cse=not self.scan_layers)
                 if self.remat else Block)
        new_cache = []
        if self.scan_layers:
            if kv_cache is not None:
                raise ValueError("scan_layers is a training layout; decode with unstacked params")
            blocks = nn.scan(block, variable_axes={"params": 0},
                             split_rngs={"params": True, "dropout": True},
                             in_axes=(nn.broadcast, nn.broadcast), length=cfg.n_layer)
            x, _ = blocks(cfg, self.activation_sharding, name="h")(x, deterministic, mask)
        for i in range(0 if self.scan_layers else cfg.n_layer):
            layer_cache = None if kv_cache is None else kv_cache[i]
            x, layer_cache = block(cfg, self.activation_sharding, name=f"h_{i}")(
                x, deterministic, mask, layer_cache, cache_index)
            new_cache.append(layer_cache)
        if logits_at is not None:
            x = jax.lax.dynamic_slice_in_dim(x, logits_at, 1, axis=1)  # (B, 1, C)
        x = _layer_norm(cfg, "ln_f")(x)

        # Tied LM head: the token embedding read backwards (wte.attend), but with float32
        # accumulation and output, since attend would round bfloat16 logits to bfloat16.
        logits = jnp.einsum("btc,vc->btv", x, wte.embedding.astype(x.dtype),
                            preferred_element_type=jnp.float32)
        logits = mask_padded_vocab(logits, cfg)
        return logits if kv_cache is None else (logits, tuple(new_cache))


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: GPTConfig, key):
    return GPT(cfg).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def init_params(cfg: GPTConfig, key) -> dict:
    """GPT-2-initialised parameters as a plain nested dict of arrays."""
    return _init(cfg, key)


def param_shapes(cfg: GPTConfig) -> dict:
    """The parameter pytree as jax.ShapeDtypeStruct leaves, without allocating anything."""
    return jax.eval_shape(functools.partial(_init, cfg), jax.random.key(0))


def count_params(cfg: GPTConfig, *, non_embedding: bool = False) -> int:
    """Number of parameters (the head is tied, so it adds none). non_embedding drops wpe,
    as in the usual 6N FLOPs-per-token estimate."""
    shapes = param_shapes(cfg)
    n = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
    return n - math.prod(shapes["wpe"]["embedding"].shape) if non_embedding else n


@functools.partial(jax.jit, static_argnums=1)
def _log_probs(params, cfg: GPTConfig, tokens, mask):
    logits = GPT(cfg).apply({"params": params}, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    out = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return out if mask is None else jnp.where(mask, out, 0.0)


def log_probs(params, cfg: GPTConfig, tokens, mask=None):
    """Per-token log p(x_t | x_<t) for scoring text.

    tokens: int (B, T), ids in [0, vocab_size), 2 <= T <= block_size + 1. Returns float32
    (B, T-1): out[:, t] = log p(tokens[:, t+1] | tokens[:, :t+1]).
    mask: optional bool (B, T-1), the shape of the result; masked-out positions give 0.
    Bad tokens, a mask of the wrong shape or params that do not match cfg raise a UserError
    (TokenError is also a ValueError). Token values are checked on the host (a device array is
    read back once for that), except inside a jax transformation, where they cannot be.
    """
    check_params(params, cfg)
    if not isinstance(tokens, jax.core.Tracer):
        tokens = check_token_ids(tokens, cfg.vocab_size, "tokens")
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2 or not 2 <= tokens.shape[1] <= cfg.block_size + 1:
        raise TokenError(f"log_probs needs tokens of shape (B, T) with 2 <= T <= block_size + 1 "
                         f"= {cfg.block_size + 1}, got shape {tokens.shape}")
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        if mask.shape != (tokens.shape[0], tokens.shape[1] - 1):
            raise TokenError(f"mask must have the result's shape "
                             f"{(tokens.shape[0], tokens.shape[1] - 1)}, got {mask.shape}")
    return _log_probs(params, cfg, tokens, mask)


# -- checks of what callers pass in (host-side, before any compiled call) --------------------

class TokenError(UserError, ValueError):
    """Token ids that are not integers in [0, vocab_size), or tokens of the wrong shape."""


def check_token_ids(tokens, vocab_size: int, what: str = "tokens") -> np.ndarray:
    """tokens as a numpy int64 array, once every value is an integer id in [0, vocab_size).

    Floats are refused rather than truncated (1.7 would become 1, NaN a huge negative id);
    bools and text too. Any shape is returned as it is: callers check the shape they need."""
    if isinstance(tokens, (str, bytes)):
        raise TokenError(f"{what} must be integer token ids, not text: encode it first "
                         f"(gpt_jax.get_tokenizer().encode(text))")
    try:
        arr = np.asarray(tokens)
    except (ValueError, TypeError, OverflowError) as e:  # ragged nesting, odd objects
        raise TokenError(f"{what} must be integer token ids (a list of ints or an int array): "
                         f"{e}") from None
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind in "US":
            raise TokenError(f"{what} must be integer token ids, not text: encode it first "
                             f"(gpt_jax.get_tokenizer().encode(text))")
        flat = arr.reshape(-1)
        if arr.dtype.kind == "O":  # Python ints beyond int64, None, mixed types
            bad = next((x for x in flat if not (isinstance(x, (int, np.integer)) and
                                                not isinstance(x, bool) and 0 <= x < vocab_size)),
                       flat[0])
            raise TokenError(f"{what} must be integer token ids in [0, {vocab_size}), "
                             f"got {bad!r}")
        if arr.dtype.kind == "f":
            bad = next((x for x in flat if not float(x).is_integer()), flat[0]).item()
            raise TokenError(f"{what} must be integer token ids, got {arr.dtype} values such "
                             f"as {bad!r}: pass ints (a float id is never rounded for you)")
        raise TokenError(f"{what} must be integer token ids, got {arr.dtype} values")
    lo, hi = int(arr.min()), int(arr.max())  # Python ints: no overflow whatever the dtype
    if lo < 0 or hi >= vocab_size:
        raise TokenError(f"token id {lo if lo < 0 else hi} in {what} is outside the model's "
                         f"vocabulary (ids 0..{vocab_size - 1}, vocab_size {vocab_size})")
    return arr.astype(np.int64, copy=False)


@functools.lru_cache(maxsize=16)
def _expected(cfg: GPTConfig) -> tuple:
    """(treedef, leaf shapes, {"h_0/attn/c_attn/kernel": shape, ...}) of cfg's params (one
    abstract init per config)."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    flat, _ = jax.tree_util.tree_flatten_with_path(shapes)
    return (treedef, [tuple(x.shape) for x in leaves],
            {_path_name(path): tuple(x.shape) for path, x in flat})


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def check_params(params, cfg: GPTConfig):
    """params, once their names and shapes are those GPT(cfg) expects (dtypes may differ).

    A cfg that does not match the params would otherwise fail deep inside flax with a
    ScopeParamShapeError, or not at all where shapes happen to broadcast."""
    if not isinstance(cfg, GPTConfig):
        raise UserError(f"cfg must be a gpt_jax.GPTConfig, got {type(cfg).__name__}")
    if not isinstance(params, Mapping):
        raise UserError(f"params must be the parameter dict that init_params, load_checkpoint "
                        f"or from_hf return, got {type(params).__name__}")
    if "h" in params and "h_0" not in params:
        raise UserError("params hold the stacked scan_layers layout: pass "
                        "gpt_jax.model.unstack_layers(params)")
    want_def, want_shapes, want = _expected(cfg)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if treedef == want_def and all(getattr(x, "shape", None) == s
                                   for x, s in zip(leaves, want_shapes)):
        return params                        # the common case: no path names built
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    got = {_path_name(path): tuple(getattr(x, "shape", ())) for path, x in flat}
    if got == want:                          # the same names in another container type
        return params
    layers = sum(1 for k in params if isinstance(k, str) and k.startswith("h_"))
    wte, wpe = got.get("wte/embedding"), got.get("wpe/embedding")
    wrong = [n for n in want if n in got and got[n] != want[n]]
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    if wte and len(wte) == 2 and wte[0] != cfg.vocab_size:
        why = f"params have vocab_size {wte[0]}, cfg.vocab_size is {cfg.vocab_size}"
    elif wte and len(wte) == 2 and wte[1] != cfg.n_embd:
        why = f"params are {wte[1]} wide, cfg.n_embd is {cfg.n_embd}"
    elif wpe and len(wpe) == 2 and wpe[0] != cfg.block_size:
        why = f"params have block_size {wpe[0]}, cfg.block_size is {cfg.block_size}"
    elif layers != cfg.n_layer:
        why = f"params have {layers} layers, cfg.n_layer is {cfg.n_layer}"
    elif wrong:
        why = f"{wrong[0]} has shape {got[wrong[0]]} in params, cfg gives {want[wrong[0]]}"
    elif missing:
        why = f"params lack {missing[0]}" + (" (cfg.bias is true)"
                                             if missing[0].endswith("bias") else "")
    else:
        why = f"params have {extra[0]}, which cfg does not" + (
            " (cfg.bias is false)" if extra[0].endswith("bias") else "")
    raise UserError(f"params do not match cfg: {why}. Pass the cfg the params were made with "
                    f"(load_checkpoint and from_hf return both)")


# -- one-token decode step, as a plain function --------------------------------------------------
# The same math as GPT for T == 1 over a KV cache, written out so the weights' layout can suit a
# step that is one matrix-vector product per weight. Tests check it against the module's full
# forward pass.

def decode_transposed() -> bool:
    """Whether decode_step wants Dense kernels as (out, in) (see decode_weights)."""
    return jax.default_backend() == "cpu"


def decode_weights(params, cfg: GPTConfig) -> dict:
    """params laid out as decode_step reads them: Dense kernels, biases and embeddings in the
    compute dtype (cast once, so a bfloat16 run streams half the bytes per token), and kernels
    as (out, in) on CPU. Leaves that need neither are returned as they are, not copied.

    On XLA:CPU every decode product streams its weight faster as W (out, in) @ x: measured on a
    2-core EPYC, 29-43 GB/s against 22-27 GB/s for x @ W (in, out) at batch 1 (the MLP's
    3072->768 projection 33 vs 22), and ~1.5x at batch 8."""
    transposed = decode_transposed()
    def lay(path, x):
        name = path[-1].key
        if name in ("kernel", "bias", "embedding") and x.dtype != cfg.compute_dtype:
            x = jnp.asarray(x, cfg.compute_dtype)
        return x.T if transposed and name == "kernel" else x
    return jax.tree_util.tree_map_with_path(lay, params)


def _linear(x, p, transposed: bool):
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
    matrix-vector product that XLA runs in place. Over (B, S, H, D) it copied both caches into
    that order every step (2 of a 19 ms GPT-2 step at batch 1; also 24 duplicated in-place
    updates when the cache was (B, H, S, D) and reshaped for the dot)."""
    return tuple(tuple(a.transpose(0, 2, 1, 3).reshape(-1, a.shape[1], a.shape[3]) for a in kv)
                 for kv in kv_cache)


def decode_step(weights, cfg: GPTConfig, tokens, positions, mask, kv_cache: KVCache,
                cache_index):
    """One new token per row, with weights from decode_weights(params).
    tokens, positions (B,); mask (B, S) bool over the cache;
    kv_cache: per layer (k, v), each (B*H, S, D) (see heads_major).
    Returns (logits float32 (B, V), new cache)."""
    dt = cfg.compute_dtype
    transposed = decode_transposed()
    B, H, D = tokens.shape[0], cfg.n_head, cfg.head_dim
    layer_norm = lambda p, x: _layer_norm(cfg, None).apply({"params": p}, x)
    wte = weights["wte"]["embedding"]                                     # (V, C)
    x = wte[tokens] + weights["wpe"]["embedding"][positions]              # (B, C)
    new_cache = []
    for i in range(cfg.n_layer):
        p = weights[f"h_{i}"]
        qkv = _linear(layer_norm(p["ln_1"], x), p["attn"]["c_attn"], transposed)
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
        x = x + _linear(y, p["attn"]["c_proj"], transposed)
        h = _linear(layer_norm(p["ln_2"], x), p["mlp"]["c_fc"], transposed)
        x = x + _linear(nn.gelu(h, approximate=True), p["mlp"]["c_proj"], transposed)
    x = layer_norm(weights["ln_f"], x)
    # The tied head: wte (V, C) is already the (out, in) orientation.
    if transposed:
        logits = jax.lax.optimization_barrier(
            jnp.einsum("vc,bc->vb", wte, x, preferred_element_type=jnp.float32)).T
    else:
        logits = jnp.einsum("bc,vc->bv", x, wte, preferred_element_type=jnp.float32)
    logits = mask_padded_vocab(logits, cfg)
    return logits, tuple(new_cache)
