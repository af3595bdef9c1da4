"""AdamW, its schedule and its weight-decay mask (gpt_jax/optimizer.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, tiny_tc
from gpt_jax.config import GPTConfig
from gpt_jax.model import init_params
from gpt_jax.optimizer import decay_mask, lr_schedule, make_optimizer


def test_decay_mask_by_name():
    cfg = GPTConfig(**{k: v for k, v in TINY.items() if k != "batch_size"})
    params = init_params(cfg, jax.random.key(0))
    flat = {jax.tree_util.keystr(p): v for p, v in
            jax.tree_util.tree_leaves_with_path(decay_mask(params))}
    decayed = sorted(k for k, v in flat.items() if v)
    expected = sorted([f"['h_{i}']['{m}']['{d}']['kernel']" for i in range(2)
                       for m, d in (("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"),
                                    ("mlp", "c_proj"))]
                      + ["['wte']['embedding']", "['wpe']['embedding']"])
    assert decayed == expected
    assert all(("bias" in k or "scale" in k) for k, v in flat.items() if not v)
    # the optimizer really decays only those: zero gradients, lr 1 -> kernels shrink by lr*wd
    tc = tiny_tc(learning_rate=1.0, min_lr=1.0, warmup_iters=0, weight_decay=0.5, grad_clip=0.0)
    tx, _ = make_optimizer(tc)
    params = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.zeros_like, params), tx.init(params), params)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        want = -0.5 if flat[jax.tree_util.keystr(path)] else 0.0
        np.testing.assert_allclose(u, want, atol=1e-6)


def test_lr_schedule_formula():
    lr, mn, W, D = 6e-4, 6e-5, 10, 100
    sched = lr_schedule(tiny_tc(learning_rate=lr, min_lr=mn, warmup_iters=W, lr_decay_iters=D))

    def formula(s):
        u = s + 1
        if u <= W:
            return lr * u / W
        if u <= D:
            return mn + (lr - mn) * 0.5 * (1 + math.cos(math.pi * (u - W) / (D - W)))
        return mn
    for s in [0, 1, 5, 8, 9, 10, 11, 50, 98, 99, 100, 150]:
        np.testing.assert_allclose(float(sched(s)), formula(s), rtol=1e-5, err_msg=f"step {s}")
    assert float(sched(0)) == pytest.approx(lr / W)       # the first update gets lr / W
    assert float(sched(W - 1)) == pytest.approx(lr)       # the peak ends the warm-up
