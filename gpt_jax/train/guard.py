"""The spike guard: skip an update whose loss or gradient norm is an outlier (the flags are
llm.c's -sl/-sg; the rule below is ours, after llm.c's outlier detector).

The statistics are a ring buffer of the last WINDOW accepted losses and gradient norms
(float32), carried in TrainState.guard and saved exactly in the checkpoint's meta, so a resumed
run takes the same decisions. Every step (guard on or off):

    z = (x - mean) / std over the buffered values (0 until there are any, or when std is 0)
    outlier = z > Z for loss or gradient norm, once skip_warmup values are buffered (Z > 0)
    an outlier's update is skipped: params and opt_state stay bit-identical (its batch is
    consumed; the schedule follows the updates applied, which opt_state counts)
    the value enters the buffer unless it is an outlier: a spike must not make the guard less
    picky; the third outlier in a row does enter it (a new level, not a spike)

llm.c's detector (llmc/outlier_detector.h at 7a0d864) differs: a window of 128 values (line
16), every value entering it, the new one included, before its z-score is taken (lines 53-56),
and no z-score at all until the window is full (line 44); it has no streak rule.

Non-finite losses are never buffered nor skipped: the trainer stops on them as before.

    g = init_guard()                              # TrainState.guard
    skip, z_loss, z_grad, g = guard_step(g, loss, grad_norm, GuardConfig(3.0, 3.0, 16))
"""
from __future__ import annotations

import os
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

WINDOW = 64          # values the running mean and deviation are over (llm.c's holds 128)
STREAK_ACCEPT = 3    # the 3rd outlier in a row enters the statistics


class GuardConfig(NamedTuple):
    loss_z: float = 0.0     # 0: off
    grad_z: float = 0.0     # 0: off
    warmup: int = WINDOW    # values buffered before it may fire

    @property
    def on(self) -> bool:
        return self.loss_z > 0 or self.grad_z > 0

    @classmethod
    def from_tc(cls, tc) -> "GuardConfig":
        return cls(float(tc.skip_loss_z), float(tc.skip_grad_z), int(tc.skip_warmup))


def init_guard() -> dict:
    """Empty statistics: loss and grad_norm buffers (WINDOW,) float32; n values buffered so
    far, streak of consecutive outliers, skipped updates in the run (int32 scalars)."""
    z = lambda: jnp.zeros((WINDOW,), jnp.float32)
    i = lambda: jnp.zeros((), jnp.int32)
    return {"loss": z(), "grad_norm": z(), "n": i(), "streak": i(), "skipped": i()}


def zscore(buf, n, x):
    """How many standard deviations x lies above the mean of the buffer's first min(n, WINDOW)
    values (0 when there are none or they are all equal)."""
    k = jnp.minimum(n, WINDOW)
    valid = jnp.arange(WINDOW) < k
    kf = jnp.maximum(k, 1).astype(jnp.float32)
    mean = jnp.sum(jnp.where(valid, buf, 0.0)) / kf
    var = jnp.sum(jnp.where(valid, jnp.square(buf - mean), 0.0)) / kf
    std = jnp.sqrt(var)
    return jnp.where(std > 0, (x - mean) / jnp.where(std > 0, std, 1.0), 0.0)


def guard_step(g: dict, loss, grad_norm, cfg: GuardConfig):
    """(skip, loss z, grad-norm z, new statistics) for a step with this loss and pre-clip
    gradient norm. With cfg off, skip is always False (the statistics still run: the z-scores
    are health metrics, and a resumed run may switch the guard on)."""
    loss, grad_norm = jnp.asarray(loss, jnp.float32), jnp.asarray(grad_norm, jnp.float32)
    z_loss, z_grad = zscore(g["loss"], g["n"], loss), zscore(g["grad_norm"], g["n"], grad_norm)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    ready = g["n"] >= cfg.warmup
    outlier = jnp.zeros((), bool)
    if cfg.loss_z > 0:
        outlier |= z_loss > cfg.loss_z
    if cfg.grad_z > 0:
        outlier |= z_grad > cfg.grad_z
    outlier &= ready & finite
    streak = jnp.where(outlier, g["streak"] + 1, 0)
    push = finite & (~outlier | (streak >= STREAK_ACCEPT))
    slot = g["n"] % WINDOW
    put = lambda buf, x: jnp.where(push, buf.at[slot].set(x), buf)
    new = {"loss": put(g["loss"], loss), "grad_norm": put(g["grad_norm"], grad_norm),
           "n": g["n"] + push.astype(jnp.int32), "streak": streak,
           "skipped": g["skipped"] + outlier.astype(jnp.int32)}
    return outlier, z_loss, z_grad, new


# -- the checkpoint's copy (meta["guard"], JSON): float32 -> Python float is exact -----------

def guard_to_meta(g: dict) -> dict:
    return {k: np.asarray(v).tolist() for k, v in g.items()}


def guard_from_meta(d) -> dict:
    """The statistics a checkpoint's meta holds, or empty ones (a checkpoint from before the
    guard existed)."""
    if not d:
        return {k: np.asarray(v) for k, v in init_guard().items()}
    return {"loss": np.asarray(d["loss"], np.float32),
            "grad_norm": np.asarray(d["grad_norm"], np.float32),
            **{k: np.asarray(d[k], np.int32) for k in ("n", "streak", "skipped")}}


# -- the test hook: a bad batch at chosen steps -----------------------------------------------

BAD_BATCH_ENV = "GPT_JAX_TEST_BAD_BATCH_STEPS"   # e.g. "12,20": for tests only, not a flag


def bad_batch_steps() -> frozenset:
    raw = os.environ.get(BAD_BATCH_ENV, "").strip()
    return frozenset(int(s) for s in raw.split(",") if s.strip())


def inject_bad_batch(batch: np.ndarray, step: int, vocab_size: int) -> np.ndarray:
    """The batch of `step` replaced by one token id repeated, drawn from the upper half of the
    vocabulary (ids a text corpus hardly uses): every target is one the model has learnt to
    make unlikely, so the loss and the gradient (all on one embedding row) jump. Deterministic
    in step."""
    rng = np.random.default_rng([7, step])
    return np.full_like(batch, rng.integers(vocab_size // 2, vocab_size))
