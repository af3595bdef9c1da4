"""The spike guard (gpt_jax/train/guard.py): its statistics and rules, a skipped update inside the
jitted step, and through the Trainer an injected bad batch that is skipped and logged."""
import jax
import jax.numpy as jnp
import numpy as np

from conftest import random_batch, tiny_tc
from gpt_jax.train.guard import WINDOW, GuardConfig, guard_step, init_guard, zscore
from gpt_jax.model.gpt import init_params
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.train.state import init_state
from gpt_jax.train.steps import make_train_step


def test_zscore_over_the_buffered_values():
    rng = np.random.default_rng(0)
    vals = rng.normal(3.0, 0.5, 100).astype(np.float32)
    buf = np.zeros(WINDOW, np.float32)
    for n in (0, 1, 5, WINDOW, 100):
        # the ring buffer after n pushes: value i sits at i % WINDOW
        for i in range(n):
            buf[i % WINDOW] = vals[i]
        window = vals[max(0, n - WINDOW):n]
        x = np.float32(4.2)
        want = 0.0 if n < 2 else (x - window.mean()) / window.std()
        np.testing.assert_allclose(float(zscore(jnp.asarray(buf), n, x)), want, rtol=1e-4,
                                   atol=1e-6, err_msg=f"n={n}")


def test_guard_rules():
    """Warm-up, a spike skipped and kept out of the statistics, the third outlier in a row let
    in (llm.c's rule), and the guard off: never skips, still buffers every value."""
    cfg = GuardConfig(loss_z=3.0, grad_z=0.0, warmup=8)
    step = jax.jit(guard_step, static_argnums=3)
    g = init_guard()
    rng = np.random.default_rng(1)
    for i in range(8):   # warm-up: even a huge value is not skipped
        skip, *_, g = step(g, 100.0 if i == 5 else 2.0 + 0.01 * rng.normal(), 1.0, cfg)
        assert not skip
    g = init_guard()
    for i in range(10):
        skip, *_, g = step(g, 2.0 + 0.01 * rng.normal(), 1.0, cfg)
        assert not skip
    assert int(g["n"]) == 10
    skip, zl, zg, g = step(g, 2.5, 1.0, cfg)           # a spike: skipped, not buffered
    assert skip and float(zl) > 3 and float(zg) == 0.0
    assert (int(g["n"]), int(g["streak"]), int(g["skipped"])) == (10, 1, 1)
    skip, *_, g = step(g, 2.0, 50.0, cfg)              # grad_z off: a grad spike passes
    assert not skip and int(g["n"]) == 11 and int(g["streak"]) == 0
    for k in (1, 2, 3):                                # a new level: the 3rd enters the window
        skip, *_, g = step(g, 2.5, 1.0, cfg)
        assert skip and int(g["streak"]) == k and int(g["n"]) == 11 + (k == 3)
    assert int(g["skipped"]) == 4
    skip, *_, g = step(g, float("nan"), 1.0, cfg)      # non-finite: neither skipped nor kept
    assert not skip and int(g["n"]) == 12
    off = GuardConfig()
    for v in (2.0, 2.0, 1e6):
        skip, *_, g = step(g, v, 1.0, off)
        assert not skip
    assert int(g["n"]) == 15 and int(g["skipped"]) == 4


def test_a_skipped_update_leaves_params_and_opt_state_bit_identical():
    tc = tiny_tc(skip_grad_z=3.0, skip_warmup=2)
    cfg = tc.model
    tx, sched = make_optimizer(tc)
    state = init_state(init_params(cfg, jax.random.key(0)), tx, jax.random.key(1))
    batch = random_batch(1, (1, 4, cfg.block_size + 1))
    # statistics of tiny gradient norms: any real one is a spike
    forged = dict(state.guard, grad_norm=jnp.full((WINDOW,), 1e-3).at[0].set(2e-3),
                  n=jnp.asarray(WINDOW, jnp.int32))
    state = state.replace(guard=forged)
    guarded = make_train_step(cfg, tx, sched, guard=GuardConfig.from_tc(tc), donate=False)
    new, m = guarded(state, batch)
    assert float(m["skip"]) == 1.0 and float(m["grad_z"]) > 1e3 and int(new.guard["skipped"]) == 1
    assert int(new.step) == 1
    same = jax.tree_util.tree_leaves((state.params, state.opt_state))
    for a, b in zip(same, jax.tree_util.tree_leaves((new.params, new.opt_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the control: off, the same step changes the weights
    plain, m = make_train_step(cfg, tx, sched, donate=False)(state, batch)
    assert float(m["skip"]) == 0.0
    assert not np.array_equal(plain.params["wte"]["embedding"], state.params["wte"]["embedding"])


def test_injected_bad_batch_is_skipped_and_logged(builtin_data, tmp_path, monkeypatch):
    """A bad batch at update 11 (the test hook GPT_JAX_TEST_BAD_BATCH_STEPS=10): skipped, a
    "skip" row and the train rows' count say so, and the weights and optimizer state after
    it are bit-identical to those before it (= a run that never saw it, stopped at step 10)."""
    import gpt_jax.checkpoint.manager as ckpt
    from gpt_jax.train.metrics import read_metrics
    from gpt_jax.train.config import TrainConfig
    from gpt_jax.train.trainer import Trainer
    monkeypatch.setenv("GPT_JAX_TEST_BAD_BATCH_STEPS", "10")
    tc = TrainConfig.from_dict(dict(
        n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, max_iters=11,
        eval_interval=10, eval_iters=1, log_interval=1, warmup_iters=2, lr_decay_iters=100,
        skip_grad_z=3.0, skip_warmup=6, out_dir=str(tmp_path)))
    Trainer(tc, progress=False, log=lambda *a: None).fit()
    rows = read_metrics(str(tmp_path))
    skips = [r for r in rows if r["kind"] == "skip"]
    assert [r["step"] for r in skips] == [11] and skips[0]["grad_z"] > 3.0, skips
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert train[10]["skipped"] == 0 and train[11]["skipped"] == 1
    assert ckpt.all_steps(str(tmp_path)) == [10, 11]
    from gpt_jax.train.state import abstract_state
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                   sharding=dev),
                                    abstract_state(tc.model, make_optimizer(tc)[0]))
    before, after = (ckpt.restore(str(tmp_path), s, params_target=target.params,
                                  opt_state_target=target.opt_state) for s in (10, 11))
    for part in ("params", "opt_state"):
        a, b = jax.tree_util.tree_leaves(before[part]), jax.tree_util.tree_leaves(after[part])
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert before["meta"]["guard"]["skipped"] == 0 and after["meta"]["guard"]["skipped"] == 1
