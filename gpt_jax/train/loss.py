"""Next-token cross-entropy: the training objective and the eval loss."""
from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import optax

from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import GPT


def cross_entropy(logits, targets):
    """Mean next-token cross-entropy in float32. logits (..., V), targets int (...).

    Padded vocab ids (>= n_real_vocab) already carry -1e9 logits from the model: exp() of them
    is exactly 0 in float32, so they add nothing to the normaliser and are never targets.
    """
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets).mean()


def loss_fn(params, cfg: GPTConfig, tokens, dropout_key=None, *, model: Optional[GPT] = None):
    """tokens int32 (B, T + 1): predict tokens[:, 1:] from tokens[:, :-1]. model: the GPT
    module to apply (steps.make_model; default GPT(cfg)); dropout only with a dropout_key.

    The value of cross_entropy(logits, tokens[:, 1:]), with the head and the loss fused
    (GPT(..., targets=), gpt_jax/model/head_loss.py) so the (B, T, V) logits are never stored."""
    model = GPT(cfg) if model is None else model
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    return model.apply({"params": params}, tokens[:, :-1], deterministic=dropout_key is None,
                       rngs=rngs, targets=tokens[:, 1:])
