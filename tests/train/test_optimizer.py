"""AdamW, its schedule and its weight-decay mask (gpt_jax/train/optimizer.py)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY, tiny_tc
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import init_params
from gpt_jax.train.optimizer import decay_mask, lr_schedule, make_optimizer


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


def llmc_lr(kind, step, lr, warmup, n, final_frac):
    """llm.c's llmc/schedulers.h (get_learning_rate_*), transcribed in float32 as it computes:
    train_num_batches = n; wsd's decay starts at (int)(0.8f * n)."""
    f = np.float32
    lr, final_frac = f(lr), f(final_frac)
    if kind == "constant":
        return lr
    if step < warmup:
        return lr * f(step + 1) / f(warmup)
    min_lr = lr * final_frac
    if kind == "cosine":
        ratio = f(step - warmup) / f(n - warmup)
        coeff = f(0.5) * (f(1) + np.cos(f(np.pi) * ratio))
        return min_lr + coeff * (lr - min_lr)
    if kind == "linear":
        ratio = f(step - warmup) / f(n - warmup)
        return lr - ratio * (lr - min_lr)
    assert kind == "wsd"
    decay_point = int(f(0.8) * f(n))
    if step < decay_point:
        return lr
    ratio = f(step - decay_point) / f(n - decay_point)
    return min_lr + (f(1) - np.sqrt(ratio)) * (lr - min_lr)


@pytest.mark.parametrize("kind", ["constant", "linear", "wsd", "cosine"])
def test_lr_schedules_equal_llmc(kind):
    """--lr_schedule values against llm.c's formulas at the boundaries: the warm-up's first and
    last steps, the first step after it, wsd's decay start (floor(0.8 * D)) and the step
    before it, the end D and after it (held). constant equals llm.c's (which has no warm-up)
    after the warm-up, and everywhere with warmup_iters 0. Our cosine (the unchanged default)
    equals llm.c's during the warm-up and llm.c's next step during the decay."""
    lr, mn, W, D = 6e-4, 6e-5, 10, 103   # 0.8 * 103 = 82.4: wsd's decay starts at 82
    tc = tiny_tc(learning_rate=lr, min_lr=mn, warmup_iters=W, lr_decay_iters=D,
                 lr_schedule=kind, decay_frac=0.2)
    sched = lr_schedule(tc)
    steps = [0, 1, W - 1, W, W + 1, 50, 81, 82, 83, D - 1, D]
    for s in steps:
        if kind == "constant" and s < W:
            want = lr * (s + 1) / W                    # our warm-up; llm.c's constant has none
        elif kind == "cosine" and s >= W:
            want = llmc_lr(kind, s + 1, lr, W, D, mn / lr) if s + 1 <= D else mn
        else:
            want = llmc_lr(kind, s, lr, W, D, mn / lr)
        np.testing.assert_allclose(float(sched(s)), want, rtol=2e-6, err_msg=f"{kind} step {s}")
    # after D: held at the last value (llm.c asserts step <= D)
    end = {"constant": lr, "cosine": mn, "linear": mn, "wsd": mn}[kind]
    np.testing.assert_allclose(float(sched(D + 50)), end, rtol=2e-6)
    if kind != "cosine":   # no warm-up: llm.c's formulas at every step
        sched0 = lr_schedule(tc.replace(warmup_iters=0))
        for s in [0, 1, 41, 81, 82, 102, 103]:
            np.testing.assert_allclose(float(sched0(s)), llmc_lr(kind, s, lr, 0, D, mn / lr),
                                       rtol=2e-6, err_msg=f"{kind} no warm-up, step {s}")


def test_schedule_flag_errors():
    from gpt_jax.errors import ConfigError
    with pytest.raises(ConfigError, match="lr_schedule must be one of cosine, constant"):
        tiny_tc(lr_schedule="step")
    with pytest.raises(ConfigError, match=r"decay_frac must be in \(0, 1\]"):
        tiny_tc(lr_schedule="wsd", decay_frac=0.0)
    with pytest.raises(ConfigError, match="wsd's decay would start at step 0 .* after "
                                          "warmup_iters"):
        tiny_tc(lr_schedule="wsd", decay_frac=1.0)   # warmup_iters 5
    with pytest.raises(ConfigError, match="skip_warmup must be an integer from 2 to 64"):
        tiny_tc(skip_warmup=65)
    with pytest.raises(ConfigError, match="skip_grad_z must be a finite non-negative"):
        tiny_tc(skip_grad_z=-1.0)
