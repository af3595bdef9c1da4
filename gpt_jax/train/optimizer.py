"""The optimizer: AdamW with a learning-rate schedule (warm-up + cosine by default; constant,
linear and warm-up-stable-decay as in llm.c's llmc/schedulers.h), global-norm gradient
clipping, and weight decay on weights only (optax).

    tx, schedule = make_optimizer(tc)
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import optax

from gpt_jax.train.config import TrainConfig, wsd_decay_start


def decay_mask(params):
    """True for the leaves that get weight decay: Dense kernels and embeddings, chosen by the
    leaf's name so that stacked (scanned) layers keep the rule; biases and LayerNorm scales
    and offsets are left alone."""
    def decays(path, _):
        return getattr(path[-1], "key", None) in ("kernel", "embedding")
    return jax.tree_util.tree_map_with_path(decays, params)


def _warmup(tc: TrainConfig) -> optax.Schedule:
    """learning_rate * (s + 1) / W for s < W, then learning_rate: llm.c's warm-up (the first
    update gets lr / W, not 0), as optax's linear schedule evaluated at s + 1."""
    if tc.warmup_iters == 0:   # optax's linear_schedule over 0 steps would hold its start, 0
        return optax.constant_schedule(tc.learning_rate)
    ramp = optax.linear_schedule(0.0, tc.learning_rate, tc.warmup_iters)
    return lambda step: ramp(step + 1)


def lr_schedule(tc: TrainConfig) -> optax.Schedule:
    """lr(s) for the update at step s (s = 0 is the first update). W = warmup_iters,
    D = lr_decay_iters, lr = learning_rate, min = min_lr.

    cosine (the default), with u = s + 1:
        u <= W:      lr * u / W                                         (s = 0 gets lr / W)
        W < u <= D:  min + (lr - min) * (1 + cos(pi * (u - W) / (D - W))) / 2
        u > D:       min
      i.e. optax.warmup_cosine_decay_schedule(0, lr, W, D, min) evaluated at s + 1: the first
      update is not wasted on lr = 0 (as in nanoGPT's (it + 1) / (warmup + 1) warm-up). Its
      warm-up equals llm.c's cosine; its decay runs one step ahead of llm.c's (our step s is
      llm.c's s + 1), and it reaches min at s = D - 1.
    The others equal llm.c's schedulers (llmc/schedulers.h, with train_num_batches = D and
    final_learning_rate_frac = min / lr) at every step s <= D, and hold their last value after:
      constant: the warm-up (lr * (s + 1) / W for s < W), then lr   (llm.c's has no warm-up:
                equal for s >= W, and everywhere with --warmup_iters 0)
      linear:   the warm-up, then lr - (lr - min) * (s - W) / (D - W)
      wsd:      the warm-up, lr until P = floor((1 - decay_frac) * D), then
                min + (lr - min) * (1 - sqrt((s - P) / (D - P)))   (llm.c: decay_frac 0.2)
    Built from optax schedules (linear_schedule, join_schedules)."""
    if tc.lr_schedule == "cosine":
        sched = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=tc.learning_rate, warmup_steps=tc.warmup_iters,
            decay_steps=tc.lr_decay_iters, end_value=tc.min_lr)
        return lambda step: sched(step + 1)
    warm, lr, lo = _warmup(tc), tc.learning_rate, tc.min_lr
    if tc.lr_schedule == "constant":
        return warm
    if tc.lr_schedule == "linear":
        decay = optax.linear_schedule(lr, lo, tc.lr_decay_iters - tc.warmup_iters)
        return optax.join_schedules([warm, decay], [tc.warmup_iters])
    if tc.lr_schedule == "wsd":
        start = wsd_decay_start(tc)
        span = tc.lr_decay_iters - start

        def sqrt_decay(s):   # s counts from the decay's start; held at min after span
            frac = jnp.clip(jnp.asarray(s, jnp.float32) / span, 0.0, 1.0)
            return lo + (1.0 - jnp.sqrt(frac)) * (lr - lo)
        return optax.join_schedules([warm, sqrt_decay], [start])
    raise ValueError(f"unknown lr_schedule {tc.lr_schedule!r}")   # TrainConfig checks it


def make_optimizer(tc: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule) from a TrainConfig's lr_schedule, learning_rate, min_lr, warmup_iters,
    lr_decay_iters, decay_frac, weight_decay, beta1, beta2 and grad_clip (0: no clipping)."""
    schedule = lr_schedule(tc)
    parts = [optax.clip_by_global_norm(tc.grad_clip)] if tc.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=tc.beta1, b2=tc.beta2, eps=1e-8,
                             weight_decay=tc.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule
