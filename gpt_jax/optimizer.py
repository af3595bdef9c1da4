"""The optimizer: AdamW with a warm-up + cosine learning-rate schedule, global-norm gradient
clipping, and weight decay on weights only (optax).

    tx, schedule = make_optimizer(tc)
"""
from __future__ import annotations

import jax
import optax

from gpt_jax.train_config import TrainConfig


def decay_mask(params):
    """True for the leaves that get weight decay: Dense kernels and embeddings, chosen by the
    leaf's name so that stacked (scanned) layers keep the rule; biases and LayerNorm scales
    and offsets are left alone."""
    def decays(path, _):
        return getattr(path[-1], "key", None) in ("kernel", "embedding")
    return jax.tree_util.tree_map_with_path(decays, params)


def lr_schedule(tc: TrainConfig) -> optax.Schedule:
    """lr(s) for the update at step s (s = 0 is the first update); with W = warmup_iters,
    D = lr_decay_iters, u = s + 1:
        u <= W:      learning_rate * u / W                              (s = 0 gets lr / W)
        W < u <= D:  min_lr + (learning_rate - min_lr) * (1 + cos(pi * (u - W) / (D - W))) / 2
        u > D:       min_lr
    i.e. optax.warmup_cosine_decay_schedule(0, lr, W, D, min_lr) evaluated at s + 1: the first
    update is not wasted on lr = 0 (as in nanoGPT's (it + 1) / (warmup + 1) warm-up)."""
    sched = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tc.learning_rate, warmup_steps=tc.warmup_iters,
        decay_steps=tc.lr_decay_iters, end_value=tc.min_lr)
    return lambda step: sched(step + 1)


def make_optimizer(tc: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule) from a TrainConfig's learning_rate, min_lr, warmup_iters,
    lr_decay_iters, weight_decay, beta1, beta2 and grad_clip (0: no clipping)."""
    schedule = lr_schedule(tc)
    parts = [optax.clip_by_global_norm(tc.grad_clip)] if tc.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=tc.beta1, b2=tc.beta2, eps=1e-8,
                             weight_decay=tc.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule
