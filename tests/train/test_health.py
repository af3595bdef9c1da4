"""Training-health metrics (gpt_jax/train/health.py) from the jitted train step: per-layer norms
against numpy, the same keys and values with scan_layers, the clip flag and the update ratio."""
import jax
import numpy as np
import pytest

from conftest import random_batch, tiny_tc
from gpt_jax.model.gpt import init_params
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.model.stacking import stack_tree
from gpt_jax.train.state import init_state
from gpt_jax.train.steps import grads_and_loss, make_train_step


def norm(tree):
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64)))
                             for x in jax.tree_util.tree_leaves(tree))))


def test_health_metrics_against_numpy_and_scan_layers():
    grad_clip = 1.0
    tc = tiny_tc(grad_clip=grad_clip, learning_rate=1e-2, warmup_iters=0)
    cfg = tc.model
    tx, sched = make_optimizer(tc)
    params = init_params(cfg, jax.random.key(0))
    batch = random_batch(1, (1, 4, cfg.block_size + 1))
    _, grads = jax.jit(grads_and_loss, static_argnums=1)(params, cfg, batch, None)
    out = {}
    for scan in (False, True):
        p = stack_tree(params, cfg.n_layer) if scan else params
        step = make_train_step(cfg, tx, sched, scan_layers=scan, grad_clip=grad_clip,
                               donate=False)
        new, m = step(init_state(p, tx, jax.random.key(1)), batch)
        out[scan] = {k: float(v) for k, v in m.items()}
        if not scan:
            moved = norm(jax.tree_util.tree_map(lambda a, b: a - b, new.params, params))
    plain, scanned = out[False], out[True]
    groups = ["wte", "wpe", "ln_f"] + [f"h_{i}" for i in range(cfg.n_layer)]
    want = {f"{kind}/{g}" for kind in ("grad_norm", "param_norm") for g in groups}
    assert want | {"param_norm", "update_ratio", "clipped"} <= set(plain)
    assert set(plain) == set(scanned)   # the stacked axis gives the same per-layer keys
    for g in groups:
        np.testing.assert_allclose(plain[f"grad_norm/{g}"], norm(grads[g]), rtol=1e-5)
        np.testing.assert_allclose(plain[f"param_norm/{g}"], norm(params[g]), rtol=1e-5)
    # layers differ from each other (a per-layer norm is not one number repeated)
    assert plain["grad_norm/h_0"] != pytest.approx(plain["grad_norm/h_1"], rel=1e-3)
    np.testing.assert_allclose(plain["param_norm"], norm(params), rtol=1e-5)
    np.testing.assert_allclose(plain["grad_norm"], norm(grads), rtol=1e-5)
    # the update that was applied, over the weights it was applied to
    np.testing.assert_allclose(plain["update_ratio"], moved / norm(params), rtol=1e-4)
    assert plain["clipped"] == float(plain["grad_norm"] >= grad_clip)
    assert plain["clipped"] == 1.0 and plain["grad_norm"] > 1.2   # random init: norm ~1.5-4
    for k, v in plain.items():
        np.testing.assert_allclose(scanned[k], v, rtol=1e-5, atol=1e-7, err_msg=k)


def test_health_can_be_left_out():
    tc = tiny_tc()
    tx, sched = make_optimizer(tc)
    cfg = tc.model
    state = init_state(init_params(cfg, jax.random.key(0)), tx, jax.random.key(1))
    _, m = make_train_step(cfg, tx, sched, health=False, donate=False)(
        state, random_batch(1, (1, 4, cfg.block_size + 1)))
    assert set(m) == {"loss", "grad_norm", "lr", "loss_z", "grad_z", "skip", "skipped"}

