"""The pure training functions (gpt_jax/train.py) and the Trainer loop, in process."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt_jax import checkpoint as ckpt
from gpt_jax.config import GPTConfig
from gpt_jax.model import GPT, init_params
from gpt_jax.train import (TrainConfig, cross_entropy, decay_mask, grads_and_loss, init_state,
                           lr_schedule, make_optimizer, make_train_step)

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=512, batch_size=4)


def tiny_tc(**kw):
    return TrainConfig(**{**TINY, "warmup_iters": 5, "lr_decay_iters": 100, **kw})


def random_batch(key, shape, vocab=512):
    return jax.random.randint(jax.random.key(key), shape, 0, vocab, jnp.int32)


def test_overfits_one_batch():
    tc = tiny_tc(learning_rate=1e-2, min_lr=1e-3, weight_decay=0.0)
    cfg = tc.model_config()
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


def test_padded_vocab_carries_no_loss_or_gradient():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50304)
    params = init_params(cfg, jax.random.key(0))
    tokens = random_batch(1, (2, 17), vocab=50257)
    logits = GPT(cfg).apply({"params": params}, tokens[:, :-1])
    assert float(logits[..., 50257:].max()) == -1e9
    full = cross_entropy(logits, tokens[:, 1:])
    real = cross_entropy(logits[..., :50257], tokens[:, 1:])
    assert float(full) == pytest.approx(float(real), rel=1e-6)
    _, g = jax.jit(grads_and_loss, static_argnums=1)(params, cfg, tokens[None], None)
    assert float(jnp.abs(g["wte"]["embedding"][50257:]).max()) == 0.0


# -- the Trainer loop, in process ------------------------------------------------------------

def trainer_tc(out_dir, **kw):
    base = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8, max_iters=30,
                learning_rate=5e-3, min_lr=5e-4, warmup_iters=5, lr_decay_iters=30,
                eval_interval=15, eval_iters=2, log_interval=5, out_dir=str(out_dir))
    return TrainConfig(**{**base, **kw})


def test_loss_falls_on_builtin_corpus(builtin_data, tmp_path):
    from gpt_jax.trainer import Trainer, read_metrics
    out = Trainer(trainer_tc(tmp_path), progress=False, log=lambda *a: None).fit()
    evals = [r for r in read_metrics(str(tmp_path)) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 15, 30]
    print([round(r["val_loss"], 3) for r in evals])
    # 30 steps of 512 tokens: the val loss falls from ~10.8 (uniform) by at least 3 nats
    assert evals[0]["val_loss"] > 10.0
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 3.0, evals
    assert out["val_loss"] == evals[-1]["val_loss"]


def test_nan_stops_and_keeps_last_checkpoint(builtin_data, tmp_path):
    from gpt_jax.trainer import Trainer, TrainingDiverged
    tc = trainer_tc(tmp_path, max_iters=4, eval_interval=2, eval_iters=1)
    Trainer(tc.replace(max_iters=2), progress=False, log=lambda *a: None).fit()
    good = ckpt.load_checkpoint(str(tmp_path))[0]
    t = Trainer(tc.replace(init_from="resume"), progress=False, log=lambda *a: None)
    t.state = t.state.replace(params=jax.tree_util.tree_map(lambda x: x * jnp.nan, t.state.params))
    with pytest.raises(TrainingDiverged, match="non-finite loss.*step 3 was not saved; the "
                                               "latest checkpoint on disk is step 2"):
        t.fit()
    assert ckpt.latest_step(str(tmp_path)) == 2
    params, _ = ckpt.load_checkpoint(str(tmp_path))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(good)):
        np.testing.assert_array_equal(a, b)


def test_init_from_hf_weights_is_wired(builtin_data, tmp_path):
    """--init_from HF_DIR starts from exactly those weights (read by gpt_jax.hf.from_hf); the
    architecture comes from the weights, dropout/dtype from the run."""
    from gpt_jax.hf import to_hf
    from gpt_jax.trainer import Trainer
    hf_cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=128)
    hf_params = init_params(hf_cfg, jax.random.key(5))
    hf_dir = to_hf(hf_params, hf_cfg, str(tmp_path / "hf"))
    out = tmp_path / "out"
    tc = trainer_tc(out, init_from=hf_dir, max_iters=2, eval_interval=2,
                    eval_iters=1, block_size=32, dropout=0.1)
    t = Trainer(tc, progress=False, log=lambda *a: None, explicit={"block_size", "dropout"})
    assert t.cfg == hf_cfg.replace(dropout=0.1)
    for a, b in zip(jax.tree_util.tree_leaves(t.state.params), jax.tree_util.tree_leaves(hf_params)):
        np.testing.assert_array_equal(a, b)
    before = ckpt.abstract_tree(hf_params)
    t.fit()
    params, cfg = ckpt.load_checkpoint(str(out))
    assert cfg.n_layer == 1 and cfg.block_size == 128
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(before)


# -- what reaches the disk, and what the messages say about it ------------------------------

QUIET = dict(progress=False, log=lambda *a: None)


def small_tc(out_dir, **kw):
    return trainer_tc(out_dir, **{**dict(n_layer=1, n_embd=32, block_size=32, batch_size=4,
                                         max_iters=4, eval_interval=2, eval_iters=1,
                                         log_interval=1), **kw})


@pytest.mark.parametrize("field, value", [
    ("learning_rate", float("nan")), ("learning_rate", float("inf")), ("min_lr", float("nan")),
    ("weight_decay", float("inf")), ("beta2", float("nan")), ("grad_clip", float("inf")),
    ("seed", 2**31), ("seed", 99999999999999999999), ("out_dir", 5), ("data", ["x"]),
    ("init_from", ""), ("resume_step", 3), ("resume_step", -2)])
def test_config_refuses_non_finite_and_mistyped_values(field, value):
    from gpt_jax.errors import ConfigError
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("content", ['{"out_dir": 5}', '{"data": ["x"]}',
                                     '{"learning_rate": 1' + '0' * 400 + '}',
                                     '{"learning_rate": NaN}'])
def test_config_file_values_of_the_wrong_type(tmp_path, content):
    from gpt_jax.errors import ConfigError
    from gpt_jax.trainer import resolve_config
    f = tmp_path / "c.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match="out_dir|data|learning_rate"):
        resolve_config(str(f))


def test_huge_learning_rate_saves_nothing_non_finite(builtin_data, tmp_path):
    """lr 1e30: the step-1 update leaves finite but huge weights whose eval loss is NaN; the
    run must stop there, save nothing, and say that no checkpoint is on disk."""
    from gpt_jax.trainer import Trainer, TrainingDiverged, read_metrics
    tc = small_tc(tmp_path, learning_rate=1e30, min_lr=1.0, eval_interval=1, max_iters=3)
    with pytest.raises(TrainingDiverged, match="step 1 was not saved; no checkpoint is on disk"):
        Trainer(tc, **QUIET).fit()
    assert ckpt.all_steps(str(tmp_path)) == []
    assert all(math.isfinite(r.get("val_loss", 0)) for r in read_metrics(str(tmp_path)))


def test_save_refuses_a_non_finite_state(builtin_data, tmp_path):
    """Whatever the losses said (a signal can stop between evals), values are checked."""
    from gpt_jax.trainer import Trainer, TrainingDiverged
    t = Trainer(small_tc(tmp_path), **QUIET)
    t.state = t.state.replace(params={**t.state.params, "ln_f": jax.tree_util.tree_map(
        lambda x: x * jnp.inf, t.state.params["ln_f"])})
    with ckpt.manager(str(tmp_path)) as mngr:
        with pytest.raises(TrainingDiverged, match="ln_f.*step 3 was not saved"):
            t.save(mngr, 3)
    assert ckpt.all_steps(str(tmp_path)) == []


def test_signal_during_the_first_eval_says_nothing_was_saved(builtin_data, tmp_path,
                                                             monkeypatch, capsys):
    """SIGINT while step 0 is evaluated: no step was trained, so nothing is saved, and no
    message may claim otherwise (it said "saved step 0" with checkpoints/ empty)."""
    import signal
    import train as train_cli
    from gpt_jax.trainer import Trainer
    real = Trainer.estimate_loss

    def interrupted(self, params, step):
        self.stop_signal = signal.SIGINT
        return real(self, params, step)
    monkeypatch.setattr(Trainer, "estimate_loss", interrupted)
    out = str(tmp_path / "o")
    assert train_cli.main(["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32",
                           "--batch_size=4", "--eval_iters=1", "--max_iters=4",
                           "--out_dir", out]) == 0
    stdout, stderr = capsys.readouterr()
    assert "SIGINT: stopped at step 0, before the first update: nothing was saved" in stderr
    assert "stopped at step 0 (no checkpoint saved)" in stdout
    assert "saved step" not in stderr + stdout and ckpt.all_steps(out) == []


def test_resume_takes_the_architecture_from_the_checkpoint(builtin_data, tmp_path):
    from gpt_jax.errors import CheckpointError, ConfigError
    from gpt_jax.trainer import Trainer
    from gpt_jax.train import TrainConfig as TC
    Trainer(small_tc(tmp_path), **QUIET).fit()
    # no architecture flags at all: n_layer=1, n_embd=32, block_size=32 come from step 4
    t = Trainer(TC(out_dir=str(tmp_path), init_from="resume", max_iters=6, batch_size=4,
                   eval_iters=1), **QUIET)
    assert (t.cfg.n_layer, t.cfg.n_embd, t.cfg.block_size) == (1, 32, 32)
    assert (t.tc.n_layer, t.tc.n_embd, t.tc.block_size) == (1, 32, 32)
    assert int(t.state.step) == 4
    # a flag the user gave that differs is an error naming it; a default is not a flag
    with pytest.raises(CheckpointError, match="n_embd: 32 vs 64"):
        Trainer(TC(out_dir=str(tmp_path), init_from="resume", max_iters=6, n_embd=64),
                **QUIET, explicit={"n_embd"})
    with pytest.raises(ConfigError, match="at step 4 and --max_iters is 4: nothing to train"):
        Trainer(TC(out_dir=str(tmp_path), init_from="resume", max_iters=4), **QUIET)
    with pytest.raises(ConfigError, match="--max_iters 0 trains nothing"):
        Trainer(small_tc(tmp_path / "new", max_iters=0), **QUIET)


def test_damaged_latest_step_and_resume_step(builtin_data, tmp_path):
    """A damaged step 4 is named with the intact step 2; --resume_step 2 continues from it,
    replaces step 4, and reproduces it bit for bit."""
    import os
    from gpt_jax.errors import CheckpointError
    from gpt_jax.trainer import Trainer
    Trainer(small_tc(tmp_path), **QUIET).fit()
    before = ckpt.load_checkpoint(str(tmp_path), step=4)[0]
    files = [os.path.join(r, f) for r, _, fs in
             os.walk(os.path.join(ckpt.checkpoint_dir(str(tmp_path)), "4", "params")) for f in fs]
    os.truncate(max(files, key=os.path.getsize), 100)
    resume = small_tc(tmp_path, init_from="resume")
    with pytest.raises(CheckpointError, match=r"step 4 .* is damaged: .*; intact steps: 2 "
                                              r"\(continue from one with --resume_step N\)"):
        Trainer(resume.replace(max_iters=6), **QUIET)
    logs = []
    t = Trainer(resume.replace(resume_step=2), progress=False, log=logs.append)
    assert int(t.state.step) == 2 and ckpt.all_steps(str(tmp_path)) == [2, 4]
    t.fit()
    assert any("removed checkpoint step(s) 4" in line for line in logs), logs
    assert ckpt.all_steps(str(tmp_path)) == [2, 4]
    after = ckpt.load_checkpoint(str(tmp_path))[0]
    for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)):
        np.testing.assert_array_equal(a, b)


def test_full_disk_during_a_training_save(builtin_data, tmp_path, monkeypatch, capfd):
    """The second save hits ENOSPC: one line, the partial step removed, step 2 kept."""
    import errno
    import os
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
    from gpt_jax.errors import CheckpointError
    from gpt_jax.trainer import Trainer
    real, calls = jch.JsonCheckpointHandler._save_fn, []

    async def disk_fills_up(self, x, directory):
        calls.append(directory)
        if len(calls) > 2:   # step 2 writes meta and config; everything after fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real(self, x, directory)
    monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", disk_fills_up)
    with pytest.raises(CheckpointError) as e:
        Trainer(small_tc(tmp_path), **QUIET).fit()
    msg = str(e.value)
    assert "could not save step 4" in msg and "No space left on device" in msg, msg
    assert "the latest checkpoint on disk is step 2" in msg and "--init_from resume" in msg, msg
    assert "Traceback" not in capfd.readouterr().err
    assert os.listdir(ckpt.checkpoint_dir(str(tmp_path))) == ["2"]


def test_init_from_sources(builtin_data, tmp_path):
    """A typo is one line before anything loads; another run's out_dir gives its weights."""
    from gpt_jax.errors import ConfigError, UserError
    from gpt_jax.trainer import Trainer
    with pytest.raises(ConfigError, match="'resme' is not scratch, resume, a directory.*"
                                          "known model name \\(gpt2, .*distilgpt2\\)"):
        Trainer(small_tc(tmp_path / "a", init_from="resme"), **QUIET)
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "sub"):
        with pytest.raises(UserError, match="--out_dir .*(is a file|not a writable directory)"):
            Trainer(small_tc(bad), **QUIET)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=64)
    params = init_params(cfg, jax.random.key(3))
    ckpt.save_checkpoint(str(tmp_path / "run"), 7, params, cfg)
    t = Trainer(small_tc(tmp_path / "b", init_from=str(tmp_path / "run")), **QUIET,
                explicit={"block_size"})
    assert t.cfg.block_size == 64 and t.tc.block_size == 32 and int(t.state.step) == 0
    for a, b in zip(jax.tree_util.tree_leaves(t.state.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
