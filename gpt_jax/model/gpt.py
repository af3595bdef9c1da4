"""GPT-2 as flax.linen modules: CausalSelfAttention, MLP, Block, GPT.

Parameter names follow GPT-2's checkpoints (wte, wpe, h_0.., ln_1, attn.c_attn, attn.c_proj,
ln_2, mlp.c_fc, mlp.c_proj, ln_f). Flax's Dense kernel is (in, out), the same layout as GPT-2's
Conv1D weights, so Hugging Face tensors map over without transposes. The one-token decode step
(decode.py) and the scorer (scoring.py) read the same parameters.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from gpt_jax.model.config import GPTConfig
from gpt_jax.errors import TokenError
from gpt_jax.model.head_loss import head_cross_entropy
from gpt_jax.model.ops import dense_dot_general

# Logit for padded vocab ids. Finite (not -inf) so that p * log p stays 0 rather than NaN.
PADDED_LOGIT = -1e9


# cuDNN's flash attention (jax.nn.dot_product_attention(implementation="cudnn")) takes only
# fp16/bf16, and head dims that are multiples of 8 up to 128 (256 from Hopper on; 128 keeps
# the rule independent of the chip). Anything else raises inside JAX, so auto picks XLA there.
CUDNN_DTYPES = ("bfloat16", "float16")
CUDNN_MAX_HEAD_DIM = 128


def cudnn_supports(cfg: GPTConfig) -> bool:
    """Whether cuDNN's fused attention takes this config's inputs (dtype and head dim)."""
    return (cfg.dtype in CUDNN_DTYPES and cfg.head_dim % 8 == 0
            and cfg.head_dim <= CUDNN_MAX_HEAD_DIM)


def attention_implementation(cfg: GPTConfig) -> Optional[str]:
    """cuDNN's fused kernel on a GPU where it takes the inputs (16-bit, head_dim a multiple of
    8 up to 128; it raises otherwise, and on CPU), else XLA's."""
    if cfg.attn_impl == "xla":
        return None
    if cfg.attn_impl == "cudnn":
        return "cudnn"
    use_cudnn = jax.default_backend() == "gpu" and cudnn_supports(cfg)
    return "cudnn" if use_cudnn else None


def attention(q, k, v, mask=None, *, is_causal=False, implementation=None):
    """Scaled dot-product attention. q: (B, T, H, D); k, v: (B, S, H, D) -> (B, T, H, D).

    mask: bool, broadcastable to (B, H, T, S), True where a query may look. is_causal masks
    top-left (query i sees keys <= i), right only when T == S: a decode step at the end of a
    longer cache must pass an explicit mask instead. Softmax runs in float32 inside.
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                        implementation=implementation)


def causal_attention(q, k, v):
    """attention(q, k, v, is_causal=True) for self-attention without a cache (T == S), as the
    training step and full forwards run it on XLA. q, k, v: (B, T, H, D) -> (B, T, H, D);
    scores and softmax statistics in float32.

    The same function, with fewer passes over the (B, H, T, T) scores: heads go next to the
    batch before the two batched matmuls, the scale is applied to q rather than to the scores,
    the causal mask is one additive pass, and the softmax is normalised after the matmul with
    v, on the (B, H, T, D) output rather than on the probabilities. The row maximum is a
    constant to autodiff (it cancels out of the softmax), so the backward pass reads the scores
    fewer times. Nothing here is specific to one backend: it is the arithmetic, not a layout.
    """
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q, k, v))             # (B, H, T, D)
    s = jnp.einsum("bhtd,bhsd->bhts", q, k, preferred_element_type=jnp.float32)
    s = s + jnp.where(causal_mask(q.shape[2])[0, 0], 0.0, -jnp.inf)    # every row sees itself
    e = jnp.exp(s - jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True)))
    y = jnp.einsum("bhts,bhsd->bhtd", e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    y = y / jnp.sum(e, axis=-1, keepdims=True)
    return jnp.swapaxes(y, 1, 2).astype(q.dtype)                       # (B, T, H, D)


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
    # init="xavier": Glorot-uniform, U(+-sqrt(6 / (fan_in + fan_out))), for every kernel and
    # no residual scaling (std unused), Xiong et al. 2020's setting. On the fused (C, 3C)
    # c_attn that is PyTorch's nn.MultiheadAttention in_proj init: variance 1 / (2C) per matrix.
    kernel_init = (nn.initializers.xavier_uniform() if cfg.init == "xavier"
                   else nn.initializers.normal(std))
    return nn.Dense(features, use_bias=cfg.bias, dtype=cfg.compute_dtype,
                    param_dtype=cfg.storage_dtype, kernel_init=kernel_init,
                    bias_init=nn.initializers.zeros, dot_general=dense_dot_general, name=name)


def _residual_std(cfg: GPTConfig) -> float:
    # GPT-2: each block adds two residual branches, so scale their output projections by
    # 1/sqrt(2 * n_layer) to keep the residual stream's variance independent of depth.
    return 0.02 / math.sqrt(2 * cfg.n_layer)


def layer_norm(cfg: GPTConfig, name: Optional[str] = None) -> nn.LayerNorm:
    """GPT-2's LayerNorm (epsilon 1e-5): the blocks', ln_f's and the decode step's."""
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
            m = (causal_mask(T) if cfg.causal else jnp.ones((1, 1, T, T), bool)) \
                if mask is None else mask
            drop = nn.Dropout(cfg.dropout, deterministic=False)
            y = attention_with_dropout(q, k, v, m, drop)
        elif mask is None and not cfg.causal:     # bidirectional: every query sees every key
            y = attention(q, k, v, implementation=attention_implementation(cfg))
        elif mask is None and attention_implementation(cfg) is None:
            y = causal_attention(q, k, v)
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
    """Pre-LN transformer block (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x)); with
    cfg.norm "post" the 2017 Transformer's (and BERT's) ln_1(x + attn(x)), then
    ln_2(x + mlp(x)): the same parameters, LayerNorm moved onto the residual stream.

    Arguments are positional-friendly so that nn.remat / nn.scan can lift the block
    (argument 2, `deterministic`, is a static Python bool).
    """
    config: GPTConfig
    activation_sharding: Any = None

    @nn.compact
    def __call__(self, x, deterministic=True, mask=None, kv_cache=None, cache_index=None):
        cfg = self.config
        drop = nn.Dropout(cfg.dropout)
        if cfg.norm == "post":
            y, kv_cache = CausalSelfAttention(cfg, name="attn")(
                x, deterministic=deterministic, mask=mask, kv_cache=kv_cache,
                cache_index=cache_index)
            x = layer_norm(cfg, "ln_1")(x + drop(y, deterministic=deterministic))
            x = layer_norm(cfg, "ln_2")(x + drop(MLP(cfg, name="mlp")(x),
                                                 deterministic=deterministic))
            return constrain(x, self.activation_sharding), kv_cache
        y, kv_cache = CausalSelfAttention(cfg, name="attn")(
            layer_norm(cfg, "ln_1")(x), deterministic=deterministic, mask=mask,
            kv_cache=kv_cache, cache_index=cache_index)
        x = x + drop(y, deterministic=deterministic)
        x = x + drop(MLP(cfg, name="mlp")(layer_norm(cfg, "ln_2")(x)),
                     deterministic=deterministic)
        return constrain(x, self.activation_sharding), kv_cache


class GPT(nn.Module):
    """tokens int32 (B, T) -> logits float32 (B, T, vocab_size).

    positions (B, T) default to 0..T-1 (a decoder passes per-row positions for padded prompts).
    With kv_cache (a tuple of per-layer (k, v)) it returns (logits, new_kv_cache).
    logits_at: compute the logits of some positions only, as the tied head is the largest
    matmul there is: an int (or traced scalar) gives that one position's, (B, 1, V) (a decoder
    needs just the next token's); int positions (B, S) give those of each row, (B, S, V) (a
    scorer needs just the scored ones).

    Run settings for big models (they change memory and compile time, never the function):
    remat recomputes each block's activations in the backward pass instead of storing them;
    scan_layers runs one compiled block n_layer times (nn.scan) over parameters stacked under
    "h" (see stack_layers / unstack_layers), so compile time stops growing with depth.
    activation_sharding (a NamedSharding for (B, T, C) activations, set by the train step on a
    mesh) pins the residual stream at block boundaries.

    targets (int (B, T), training): return the mean next-token cross-entropy (float32) of the
    logits against them instead of the logits, through head_cross_entropy (head_loss.py), which
    the float32 (B, T, V) logits never leave.
    """
    config: GPTConfig
    remat: bool = False
    scan_layers: bool = False
    activation_sharding: Any = None

    @nn.compact
    def __call__(self, tokens, *, deterministic=True, positions=None, mask=None, kv_cache=None,
                 cache_index=None, logits_at=None, targets=None):
        cfg = self.config
        B, T = tokens.shape
        if targets is not None and (kv_cache is not None or logits_at is not None):
            raise ValueError("targets (the training loss) goes with neither kv_cache nor "
                             "logits_at")
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
        if logits_at is not None and jnp.ndim(logits_at) == 0:
            x = jax.lax.dynamic_slice_in_dim(x, logits_at, 1, axis=1)  # (B, 1, C)
        elif logits_at is not None:
            x = jnp.take_along_axis(x, logits_at[..., None], axis=1)  # (B, S, C)
        if cfg.final_ln:       # final_ln=False: the head reads the last block's output as is
            x = layer_norm(cfg, "ln_f")(x)

        # Tied LM head: the token embedding read backwards (wte.attend), but with float32
        # accumulation and output, since attend would round bfloat16 logits to bfloat16.
        # Untied: its own (V, C) matrix "lm_head" (HF's lm_head.weight layout), read the same.
        head = wte if cfg.tie_embeddings else embed(cfg.vocab_size, name="lm_head")
        embedding = head.embedding.astype(x.dtype)
        if targets is not None:
            return head_cross_entropy(x.reshape(B * T, -1), embedding, targets.reshape(B * T),
                                      cfg.n_real_vocab)
        logits = jnp.einsum("btc,vc->btv", x, embedding, preferred_element_type=jnp.float32)
        logits = mask_padded_vocab(logits, cfg)
        return logits if kv_cache is None else (logits, tuple(new_cache))


@functools.partial(jax.jit, static_argnums=0)
def _init(cfg: GPTConfig, key):
    return GPT(cfg).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def init_params(cfg: GPTConfig, key) -> dict:
    """GPT-2-initialised parameters: N(0, 0.02) weights, the residual projections at
    0.02 / sqrt(2 n_layer), zero biases, unit LayerNorm scales (cfg.init="xavier": every Dense
    kernel Glorot-uniform instead, embeddings still N(0, 0.02)).

    Args:
      cfg: the model's GPTConfig.
      key: a jax PRNG key (jax.random.key(seed)); the same key gives the same params.

    Returns:
      A nested dict of float32 arrays in GPT-2's layout: wte (V, C), wpe (T, C), h_0 ...
      h_{L-1} (ln_1, attn.c_attn (C, 3C), attn.c_proj (C, C), ln_2, mlp.c_fc (C, 4C),
      mlp.c_proj (4C, C)), ln_f (unless cfg.final_ln is false), and lm_head (C, V) when the
      head is untied. Keep them with
      this cfg: another cfg of the same shapes (n_head changed) runs without error and
      computes another model (see GPTConfig).
    """
    return _init(cfg, key)


def param_shapes(cfg: GPTConfig) -> dict:
    """The parameter pytree as jax.ShapeDtypeStruct leaves, without allocating anything."""
    return jax.eval_shape(functools.partial(_init, cfg), jax.random.key(0))


def count_params(cfg: GPTConfig, *, non_embedding: bool = False) -> int:
    """How many parameters a model of this config has, from the shapes alone.

    Args:
      cfg: the model's GPTConfig (a tied head adds no parameters; an untied one
        vocab_size x n_embd).
      non_embedding: leave out wpe, as in the usual 6N FLOPs-per-token estimate.

    Returns:
      The count, an int (124,439,808 for the gpt2 preset).
    """
    shapes = param_shapes(cfg)
    n = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))
    return n - math.prod(shapes["wpe"]["embedding"].shape) if non_embedding else n
