"""The train and eval steps (gpt_jax/train/steps.py): a tiny model overfits one batch, and
gradient accumulation equals one big batch."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from conftest import TINY, random_batch, tiny_tc
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import init_params
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.train.state import init_state
from gpt_jax.train.steps import grads_and_loss, make_train_step


def test_overfits_one_batch():
    tc = tiny_tc(learning_rate=1e-2, min_lr=1e-3, weight_decay=0.0)
    cfg = tc.model
    tx, sched = make_optimizer(tc)
    state = init_state(init_params(cfg, jax.random.key(0)), tx, jax.random.key(1))
    step = make_train_step(cfg, tx, sched)
    batch = random_batch(2, (1, 4, 17))
    losses = []
    for _ in range(100):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
        if losses[-1] < 0.1:
            break
    assert losses[0] > 5.5 and losses[-1] < 0.1, losses[::10]
    assert int(state.step) == len(losses)


def test_gradient_accumulation_matches_one_big_batch():
    cfg = GPTConfig(**{k: v for k, v in TINY.items() if k != "batch_size"})
    params = init_params(cfg, jax.random.key(0))
    big = random_batch(3, (1, 12, 17))
    key = jax.random.key(9)
    f = jax.jit(grads_and_loss, static_argnums=1)
    loss1, g1 = f(params, cfg, big, key)
    for k in (3,):
        lossk, gk = f(params, cfg, big.reshape(k, 12 // k, 17), key)
        np.testing.assert_allclose(lossk, loss1, rtol=1e-5)
        np.testing.assert_allclose(optax.tree.norm(gk), optax.tree.norm(g1), rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(gk), jax.tree_util.tree_leaves(g1)):
            # summation order moves an entry by up to ~1e-6 of its leaf's largest (rounding
            # scales with the summed terms, not the result); a dropped micro-batch moves ~0.5
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
    # and through the jitted train step: the metrics report the same loss and gradient norm
    tc = tiny_tc()
    tx, sched = make_optimizer(tc)
    step = make_train_step(cfg, tx, sched, donate=False)
    state = init_state(params, tx, key)
    _, m1 = step(state, big)
    _, m3 = step(state, big.reshape(3, 4, 17))
    np.testing.assert_allclose(m3["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m3["grad_norm"], m1["grad_norm"], rtol=1e-5)
