"""The training and eval steps, and the one place where training is jitted.

    tx, schedule = make_optimizer(tc)                     # gpt_jax/train/optimizer.py
    state = init_state(params, tx, jax.random.key(seed))  # gpt_jax/train/state.py
    train_step = make_train_step(cfg, tx, schedule)       # jitted, state donated
    state, metrics = train_step(state, batch)             # batch int32 (accum, B, T + 1)
    # metrics: loss, grad_norm, lr, the spike guard's and the health keys (gpt_jax/train/health.py)

On a mesh (any number of devices or hosts) the same functions run with explicit shardings:

    mesh = make_mesh("data=2,fsdp=4")                     # gpt_jax/model/sharding.py
    state = new_state(cfg, tx, mesh, seed=seed)           # built directly in its shards
    train_step = make_train_step(cfg, tx, schedule, mesh=mesh)
    state, metrics = train_step(state, make_global_batch(rows, mesh, (accum, B, T + 1)))

`remat` and `scan_layers` (run settings of the GPT module) change memory and compile time,
not the losses.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

from gpt_jax.model.config import GPTConfig
from gpt_jax.train.guard import GuardConfig, guard_step
from gpt_jax.train.health import group_sumsq, health_metrics
from gpt_jax.train.loss import loss_fn
from gpt_jax.model.gpt import GPT
from gpt_jax.model.sharding import activation_sharding, batch_sharding, replicated
from gpt_jax.train.state import TrainState, state_shardings


def make_model(cfg: GPTConfig, *, remat: bool = False, scan_layers: bool = False,
               mesh=None) -> GPT:
    """The GPT module with the run's settings (none of which changes the function): remat,
    scan_layers (params stacked under "h"), and on a mesh activations kept split by rows."""
    sharding = None
    if mesh is not None:
        sharding = activation_sharding(mesh)
    return GPT(cfg, remat=remat, scan_layers=scan_layers, activation_sharding=sharding)


def grads_and_loss(params, cfg: GPTConfig, batch, dropout_key, *,
                   model: Optional[GPT] = None):
    """Mean loss and gradient over the micro-batches of batch (accum, B, T + 1).

    The micro-batches run one after another in a lax.scan (memory of one micro-batch), their
    gradients summed and divided by accum: equal (up to rounding) to one batch of accum * B.
    """
    use_dropout = cfg.dropout > 0
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model))

    def micro(i, tokens):
        key = jax.random.fold_in(dropout_key, i) if use_dropout else None
        return grad_fn(params, cfg, tokens, key)

    accum = batch.shape[0]
    if accum == 1:   # no loop: lets XLA fuse the update into the backward pass
        return micro(0, batch[0])

    def body(carry, xs):
        loss, grads = micro(*xs)
        return jax.tree_util.tree_map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), batch))
    return loss / accum, jax.tree_util.tree_map(lambda g: g / accum, grads)


def train_step(state: TrainState, batch, *, cfg: GPTConfig, tx: optax.GradientTransformation,
               schedule: optax.Schedule, model: Optional[GPT] = None, grad_clip: float = 0.0,
               health: bool = True, guard: GuardConfig = GuardConfig()
               ) -> tuple[TrainState, dict]:
    """One optimizer update from batch int32 (accum, B, T + 1). Metrics: loss (mean over the
    step's tokens, before the update), grad_norm (global, before clipping), lr (of this
    update), the spike guard's loss_z, grad_z, skip (1.0: this update was skipped) and skipped
    (updates skipped in the run); with health, gpt_jax/train/health.py's keys too.

    A skipped update (guard on) leaves params and opt_state bit-identical: both are selected
    whole, so the optimizer's step count (and with it the schedule) counts applied updates.
    """
    dropout_key = jax.random.fold_in(state.rng, state.step)
    loss, grads = grads_and_loss(state.params, cfg, batch, dropout_key, model=model)
    if health:   # per-group sums of squares, which give the global norm as well
        grad_sumsq = group_sumsq(grads)
        grad_norm = jnp.sqrt(sum(grad_sumsq.values()))
    else:
        grad_norm = optax.tree.norm(grads)
    skip, z_loss, z_grad, guard_state = guard_step(state.guard, loss, grad_norm, guard)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if guard.on:   # off (the default): no select at all in the program
        keep = lambda new, old: jax.tree_util.tree_map(
            lambda a, b: jnp.where(skip, b, a), new, old)
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    applied = state.step - state.guard["skipped"]   # the updates opt_state has counted
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "lr": jnp.asarray(schedule(applied), jnp.float32),
               "loss_z": z_loss, "grad_z": z_grad, "skip": skip.astype(jnp.float32),
               "skipped": guard_state["skipped"]}
    if health:
        metrics.update(health_metrics(state.params, grad_sumsq, updates, grad_norm, grad_clip))
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         guard=guard_state), metrics


def make_train_step(cfg: GPTConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, mesh=None, shardings: Optional[TrainState] = None,
                    remat: bool = False, scan_layers: bool = False,
                    donate: bool = True, grad_clip: float = 0.0, health: bool = True,
                    guard: GuardConfig = GuardConfig()) -> Callable:
    """The jitted train step: (state, batch) -> (state, metrics), the state's buffers donated.
    The one place where the step is jitted. grad_clip (tx's own, for the `clipped` metric),
    health (the health metrics) and guard (the spike guard's thresholds) are static.

    With a mesh the step takes explicit shardings: the state on `shardings` (default
    state_shardings(...)), the batch's rows over (data, fsdp), metrics replicated. XLA then
    inserts the collectives: gradients all-reduced over data, fsdp weights all-gathered where
    a layer uses them and their gradients reduce-scattered. Nothing else changes with the mesh.
    """
    model = make_model(cfg, remat=remat, scan_layers=scan_layers, mesh=mesh)
    fn = functools.partial(train_step, cfg=cfg, tx=tx, schedule=schedule, model=model,
                           grad_clip=grad_clip, health=health, guard=guard)
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(fn, donate_argnums=donate_argnums)
    if shardings is None:
        shardings = state_shardings(cfg, tx, mesh, scan_layers=scan_layers)
    return jax.jit(fn, in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=donate_argnums)


def make_eval_step(cfg: GPTConfig, *, mesh=None, param_shardings=None, remat: bool = False,
                   scan_layers: bool = False) -> Callable:
    """Jitted (params, tokens (B, T + 1)) -> mean loss, dropout off; on a mesh the params stay
    where the train state keeps them and the rows split over (data, fsdp)."""
    model = make_model(cfg, remat=remat, scan_layers=scan_layers, mesh=mesh)
    fn = lambda params, tokens: loss_fn(params, cfg, tokens, model=model)
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, in_shardings=(param_shardings, batch_sharding(mesh, 2, 0)),
                   out_shardings=replicated(mesh))
