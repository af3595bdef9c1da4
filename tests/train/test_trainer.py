"""The Trainer loop (gpt_jax/train/trainer.py and the builders of gpt_jax/train/start.py), in process:
what it learns, what reaches the disk, and what the messages say about it."""
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_jax.checkpoint.manager as ckpt
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import init_params
from gpt_jax.train.config import TrainConfig


def trainer_tc(out_dir, **kw):
    base = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8, max_iters=30,
                learning_rate=5e-3, min_lr=5e-4, warmup_iters=5, lr_decay_iters=30,
                eval_interval=15, eval_iters=2, log_interval=5, out_dir=str(out_dir))
    return TrainConfig.from_dict({**base, **kw})


def test_loss_falls_on_builtin_corpus(builtin_data, tmp_path):
    from gpt_jax.train.metrics import read_metrics
    from gpt_jax.train.trainer import Trainer
    out = Trainer(trainer_tc(tmp_path), progress=False, log=lambda *a: None).fit()
    evals = [r for r in read_metrics(str(tmp_path)) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 15, 30]
    print([round(r["val_loss"], 3) for r in evals])
    # 30 steps of 512 tokens: the val loss falls from ~10.8 (uniform) by at least 3 nats
    assert evals[0]["val_loss"] > 10.0
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 3.0, evals
    assert out["val_loss"] == evals[-1]["val_loss"]


def test_nan_stops_and_keeps_last_checkpoint(builtin_data, tmp_path):
    from gpt_jax.train.trainer import Trainer, TrainingDiverged
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
    """--init_from HF_DIR starts from exactly those weights (read by gpt_jax.checkpoint.hf.from_hf); the
    architecture comes from the weights, dropout/dtype from the run."""
    from gpt_jax.checkpoint.hf import to_hf
    from gpt_jax.train.trainer import Trainer
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


def test_huge_learning_rate_saves_nothing_non_finite(builtin_data, tmp_path):
    """lr 1e30: the step-1 update leaves finite but huge weights whose eval loss is NaN; the
    run must stop there, save nothing, and say that no checkpoint is on disk."""
    from gpt_jax.train.metrics import read_metrics
    from gpt_jax.train.trainer import Trainer, TrainingDiverged
    tc = small_tc(tmp_path, learning_rate=1e30, min_lr=1.0, eval_interval=1, max_iters=3)
    with pytest.raises(TrainingDiverged, match="step 1 was not saved; no checkpoint is on disk"):
        Trainer(tc, **QUIET).fit()
    assert ckpt.all_steps(str(tmp_path)) == []
    assert all(math.isfinite(r.get("val_loss", 0)) for r in read_metrics(str(tmp_path)))


def test_save_refuses_a_non_finite_state(builtin_data, tmp_path):
    """Whatever the losses said (a signal can stop between evals), values are checked."""
    from gpt_jax.train.trainer import Trainer, TrainingDiverged
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
    import gpt_jax.cli.train as train_cli
    from gpt_jax.train.trainer import Trainer
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
    from gpt_jax.train.trainer import Trainer
    TC = TrainConfig.from_dict
    Trainer(small_tc(tmp_path), **QUIET).fit()
    # no architecture flags at all: n_layer=1, n_embd=32, block_size=32 come from step 4
    t = Trainer(TC(dict(out_dir=str(tmp_path), init_from="resume", max_iters=6, batch_size=4,
                        eval_iters=1)), **QUIET)
    assert (t.cfg.n_layer, t.cfg.n_embd, t.cfg.block_size) == (1, 32, 32)
    assert (t.tc.model.n_layer, t.tc.model.n_embd, t.tc.model.block_size) == (1, 32, 32)
    assert int(t.state.step) == 4
    t.close()   # releases out_dir (fit() would): the runs below may take it
    # a flag the user gave that differs is an error naming it; a default is not a flag
    with pytest.raises(CheckpointError, match="n_embd: 32 vs 64"):
        Trainer(TC(dict(out_dir=str(tmp_path), init_from="resume", max_iters=6, n_embd=64)),
                **QUIET, explicit={"n_embd"})
    with pytest.raises(ConfigError, match="at step 4 and --max_iters is 4: nothing to train"):
        Trainer(TC(dict(out_dir=str(tmp_path), init_from="resume", max_iters=4)), **QUIET)
    with pytest.raises(ConfigError, match="--max_iters 0 trains nothing"):
        Trainer(small_tc(tmp_path / "new", max_iters=0), **QUIET)


def test_damaged_latest_step_and_resume_step(builtin_data, tmp_path):
    """A damaged step 4 is named with the intact step 2; --resume_step 2 continues from it,
    replaces step 4, and reproduces it bit for bit."""
    import os
    from gpt_jax.errors import CheckpointError
    from gpt_jax.train.trainer import Trainer
    Trainer(small_tc(tmp_path), **QUIET).fit()
    before = ckpt.load_checkpoint(str(tmp_path), step=4)[0]
    files = [os.path.join(r, f) for r, _, fs in
             os.walk(os.path.join(ckpt.checkpoint_dir(str(tmp_path)), "4", "params")) for f in fs]
    os.truncate(max(files, key=os.path.getsize), 100)
    resume = small_tc(tmp_path, init_from="resume")
    with pytest.raises(CheckpointError, match=r"step 4 .* is damaged: .*; intact steps: 2 "
                                              r"\(continue from the latest with --resume_step 2\)"):
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


def test_a_scratch_run_never_deletes_steps_it_did_not_write(builtin_data, tmp_path):
    """Another run's step that appears in out_dir after a scratch run's start-up check is
    not this run's to delete (it used to reach delete_steps_after(mngr, None): a TypeError)."""
    from gpt_jax.train.trainer import Trainer
    other = tmp_path / "other"
    Trainer(small_tc(other, max_iters=6, eval_interval=6), **QUIET).fit()
    t = Trainer(small_tc(tmp_path), **QUIET)          # the out_dir check passes: it is empty
    os.makedirs(ckpt.checkpoint_dir(str(tmp_path)))
    shutil.copytree(os.path.join(ckpt.checkpoint_dir(str(other)), "6"),
                    os.path.join(ckpt.checkpoint_dir(str(tmp_path)), "6"))
    t.fit()
    assert ckpt.all_steps(str(tmp_path)) == [2, 4, 6]


def test_full_disk_during_a_training_save(builtin_data, tmp_path, monkeypatch, capfd):
    """The second save hits ENOSPC: one line, the partial step removed, step 2 kept."""
    import errno
    import os
    from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
    from gpt_jax.errors import CheckpointError
    from gpt_jax.train.trainer import Trainer
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
    from gpt_jax.train.trainer import Trainer
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
    assert t.cfg.block_size == 64 and t.tc.model.block_size == 32 and int(t.state.step) == 0
    for a, b in zip(jax.tree_util.tree_leaves(t.state.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
