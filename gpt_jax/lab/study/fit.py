"""Several seeds of one model trained in one compiled step, with any loss: the study's topics
that need their own objective (BERT's masked LM) or mean ± sd over seeds (weight tying).

    fit = train_seeds(cfg, loss, data, seeds=(0, 1, 2), steps=300, lr=3e-3, warmup=30,
                      batch_size=8)
    fit.params      # every leaf stacked over seeds: (S, ...)
    fit.losses      # (S, steps) train loss, fit.supervised (S, steps) tokens it was taken on

Why vmap: on 2 CPU cores a 4 x 64 model is too small to keep both busy, so S seeds side by side
cost far less than S runs (one dispatch, bigger matmuls). The optimizer is the library's
(make_optimizer of a TrainConfig: AdamW, GPT-2's clipping and weight decay, warm-up + cosine to
lr / 10), as in runs.train, so a study arm trained here is trained as `runs.train` would be.
Seed s draws both its init (init_params(cfg, key(s))) and its batches (BatchSampler seed s).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_jax.data.tokens import BatchSampler
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import init_params
from gpt_jax.train.config import TrainConfig
from gpt_jax.train.optimizer import make_optimizer

__all__ = ["Fit", "mean_sd", "seed_slice", "train_seeds"]

# loss(params, tokens (B, T + 1), key) -> (mean loss, number of tokens it was taken on)
Loss = Callable[[dict, jax.Array, jax.Array], tuple]


@dataclass
class Fit:
    """S seeds of one config after training."""
    cfg: GPTConfig
    seeds: tuple
    params: dict              # leaves (S, ...)
    losses: np.ndarray        # (S, steps) float32 train loss per step
    supervised: np.ndarray    # (S, steps) int: tokens the loss was taken on, per step
    seconds: float
    evals: dict               # step -> whatever `evaluate` returned after that many steps


def seed_slice(params: dict, i: int) -> dict:
    """The params of the i-th seed of a Fit (leaves (S, ...) -> (...))."""
    return jax.tree.map(lambda a: a[i], params)


def train_seeds(cfg: GPTConfig, loss: Loss, data, *, seeds=(0,), steps: int, lr: float,
                warmup: int, batch_size: int, eval_at=(), evaluate=None, bar=None,
                label: str = "") -> Fit:
    """Train one model per seed from scratch, all seeds in one jitted (vmapped) step.

    Args:
      cfg: the model (every seed the same architecture).
      loss: loss(params, tokens (B, T + 1), key) -> (scalar loss, supervised-token count);
        key is this seed's and step's (for a loss that draws, e.g. BERT's masking).
      data: TokenData-shaped (the study's SmallVocab), read through BatchSampler.
      seeds: one model per seed: its init key, its batch order and its loss keys.
      steps, lr, warmup, batch_size: as runs.train (warm-up, cosine to lr / 10).
      eval_at: steps after which to call evaluate(params stacked (S, ...)) (0: at init).
      evaluate: the callback; what it returns is kept in Fit.evals[step].
      bar: a tqdm bar advanced one per step.

    Returns:
      a Fit (params stacked over seeds).
    """
    tc = TrainConfig(model=cfg, max_iters=steps, learning_rate=lr, min_lr=lr / 10,
                     warmup_iters=warmup, lr_decay_iters=max(steps, warmup + 1),
                     batch_size=batch_size)
    tx, _ = make_optimizer(tc)
    seeds = tuple(int(s) for s in seeds)
    # init_params seed by seed, stacked: the same values as vmapping it, and its one compiled
    # program per cfg is shared with any other caller of init_params
    params = jax.tree.map(lambda *a: jnp.stack(a),
                          *[init_params(cfg, jax.random.key(s)) for s in seeds])
    opt = jax.vmap(tx.init)(params)
    samplers = [BatchSampler(data, block_size=cfg.block_size, batch_size=batch_size, seed=s)
                for s in seeds]
    base = jnp.stack([jax.random.key(1000 + s) for s in seeds])   # loss keys, apart from init

    @jax.jit
    def step_fn(params, opt, batch, step):       # batch (S, B, T + 1)
        def one(p, o, b, k):
            (value, n), g = jax.value_and_grad(loss, has_aux=True)(p, b, k)
            updates, o = tx.update(g, o, p)
            return optax.apply_updates(p, updates), o, value, n
        keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(base)
        return jax.vmap(one)(params, opt, batch, keys)

    evals, losses, counts = {}, [], []
    eval_at = set(eval_at)
    t0 = time.perf_counter()
    if 0 in eval_at and evaluate is not None:
        evals[0] = evaluate(params)
    for step in range(steps):
        batch = np.stack([s.train_batch(step)[0] for s in samplers])
        params, opt, value, n = step_fn(params, opt, batch, step)
        losses.append(value)          # device arrays: read once at the end, not per step
        counts.append(n)
        if bar is not None:
            bar.update(1)
        if step + 1 in eval_at and evaluate is not None:
            evals[step + 1] = evaluate(params)
            if bar is not None:
                bar.set_postfix_str(f"{label} step {step + 1}")
    losses = np.asarray(jax.device_get(losses), np.float32).T       # (S, steps)
    counts = np.asarray(jax.device_get(counts), np.int64).T
    return Fit(cfg, seeds, params, losses, counts, time.perf_counter() - t0, evals)


def mean_sd(values) -> tuple[float, float]:
    """(mean, sample sd) of a list of floats (sd 0 for one value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
