import os

import jax
import numpy as np
import pytest

from gpt_jax import CheckpointError, init_params, load_checkpoint, save_checkpoint
import gpt_jax.checkpoint.manager as ckpt
from gpt_jax.checkpoint.manager import checkpoint_dir, latest_step
from gpt_jax.checkpoint.integrity import NonFiniteError

from conftest import damage_params_file


def leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb))


@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_round_trip_is_bit_identical(tmp_path, tiny_cfg, param_dtype):
    cfg = tiny_cfg.replace(param_dtype=param_dtype)
    params = init_params(cfg, jax.random.key(0))
    save_checkpoint(str(tmp_path), 3, params, cfg)
    save_checkpoint(str(tmp_path), 7, jax.tree_util.tree_map(lambda x: x + 1, params), cfg)
    restored, rcfg = load_checkpoint(str(tmp_path), step=3)
    assert rcfg == cfg and leaves_equal(params, restored)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(restored)
    latest, _ = load_checkpoint(str(tmp_path))  # latest = step 7
    assert not leaves_equal(params, latest)
    assert latest_step(str(tmp_path)) == 7


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope"))


def test_directory_without_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints/ directory"):
        load_checkpoint(str(tmp_path))
    os.makedirs(checkpoint_dir(str(tmp_path)))
    with pytest.raises(CheckpointError, match="no finished checkpoint"):
        load_checkpoint(str(tmp_path))


def test_unknown_step_lists_available(tmp_path, tiny_cfg):
    save_checkpoint(str(tmp_path), 5, init_params(tiny_cfg, jax.random.key(0)), tiny_cfg)
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 4.*available: \[5\]"):
        load_checkpoint(str(tmp_path), step=4)


def test_mismatched_config_is_named(tmp_path, tiny_cfg):
    save_checkpoint(str(tmp_path), 1, init_params(tiny_cfg, jax.random.key(0)), tiny_cfg)
    with pytest.raises(CheckpointError, match="n_layer: 2 vs 3"):
        load_checkpoint(str(tmp_path), expected_config=tiny_cfg.replace(n_layer=3))
    # Dropout and dtypes are run settings, not architecture: they may differ.
    load_checkpoint(str(tmp_path), expected_config=tiny_cfg.replace(dropout=0.1))


def raw_save(out_dir, step, params, cfg):
    """What an older version, or another tool, could have written: orbax without our checks."""
    import orbax.checkpoint as ocp
    with ckpt.manager(out_dir) as m:
        m.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave({"step": step}),
            config=ocp.args.JsonSave(cfg.to_dict())))
        m.wait_until_finished()


def test_save_refuses_params_that_do_not_fit_their_config(tmp_path, tiny_cfg):
    wrong = init_params(tiny_cfg.replace(n_embd=32), jax.random.key(0))
    with pytest.raises(CheckpointError, match="do not fit the config.*could never be loaded"):
        save_checkpoint(str(tmp_path / "o"), 1, wrong, tiny_cfg)  # config 64 wide, tensors 32
    assert not (tmp_path / "o").exists()
    stacked = {"wte": wrong["wte"], "h": {}}
    with pytest.raises(CheckpointError, match="unstacked GPT-2 layout"):
        save_checkpoint(str(tmp_path / "o"), 1, stacked, tiny_cfg)


def test_restore_names_params_that_do_not_fit_their_config(tmp_path, tiny_cfg):
    raw_save(str(tmp_path), 1, init_params(tiny_cfg.replace(n_embd=32), jax.random.key(0)),
             tiny_cfg)
    with pytest.raises(CheckpointError, match="does not fit|do not fit") as e:
        load_checkpoint(str(tmp_path))
    assert "damaged" not in str(e.value)


@pytest.mark.parametrize("step", [-1, True, 2.0, "3"])
def test_save_refuses_bad_steps(tmp_path, tiny_cfg, step):
    with pytest.raises(CheckpointError, match="non-negative integer"):
        save_checkpoint(str(tmp_path / "o"), step, init_params(tiny_cfg, jax.random.key(0)),
                        tiny_cfg)
    assert not (tmp_path / "o").exists()


def test_save_refuses_an_existing_step(tmp_path, tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    save_checkpoint(str(tmp_path), 4, params, tiny_cfg)
    with pytest.raises(CheckpointError, match="already holds step 4"):
        save_checkpoint(str(tmp_path), 4, jax.tree_util.tree_map(lambda x: x + 1, params),
                        tiny_cfg)
    assert leaves_equal(load_checkpoint(str(tmp_path))[0], params)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_save_refuses_non_finite_values(tmp_path, tiny_cfg, bad):
    params = init_params(tiny_cfg, jax.random.key(0))
    params["h_1"]["mlp"]["c_fc"]["kernel"] = params["h_1"]["mlp"]["c_fc"]["kernel"].at[3, 5].set(bad)
    with pytest.raises(NonFiniteError, match="NaN or inf.*h_1/mlp/c_fc/kernel"):
        save_checkpoint(str(tmp_path / "o"), 1, params, tiny_cfg)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("how", ["truncate", "overwrite"])
def test_damaged_step_is_named_with_the_intact_ones(tmp_path, tiny_cfg, how):
    params = init_params(tiny_cfg, jax.random.key(0))
    for step in (1, 2, 3):
        save_checkpoint(str(tmp_path), step, params, tiny_cfg)
    damage_params_file(str(tmp_path), 3, how)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(tmp_path))
    msg = str(e.value)
    assert "step 3" in msg and "is damaged" in msg and "intact steps: 1, 2" in msg, msg
    assert "\n" not in msg and "pybind11" not in msg and "TensorStore" not in msg, msg
    assert leaves_equal(load_checkpoint(str(tmp_path), step=2)[0], params)


def test_non_finite_values_on_disk_are_damage(tmp_path, tiny_cfg):
    """Bytes that decode to NaN (or a checkpoint an older version saved from a diverged run)
    must not load as weights: sample.py would print only <|endoftext|>."""
    params = init_params(tiny_cfg, jax.random.key(0))
    save_checkpoint(str(tmp_path), 1, params, tiny_cfg)
    raw_save(str(tmp_path), 2, jax.tree_util.tree_map(lambda x: x * np.nan, params), tiny_cfg)
    with pytest.raises(CheckpointError, match=r"step 2 .* is damaged: its params hold NaN or inf"
                                              r".*intact steps: 1"):
        load_checkpoint(str(tmp_path))
    raw_save(str(tmp_path), 3, jax.tree_util.tree_map(lambda x: x * np.inf, params), tiny_cfg)
    with pytest.raises(CheckpointError, match="no other intact step|intact steps: 1"):
        load_checkpoint(str(tmp_path), step=3)


def test_full_disk_during_save_is_one_line_and_keeps_older_steps(tmp_path, tiny_cfg,
                                                                  monkeypatch, caplog, capfd):
    """ENOSPC from inside orbax's writer threads (after the params are written): one
    CheckpointError, no logged tracebacks, the partial step removed, step 1 still loads."""
    import errno
    from orbax.checkpoint._src.handlers import json_checkpoint_handler
    params = init_params(tiny_cfg, jax.random.key(0))
    save_checkpoint(str(tmp_path), 1, params, tiny_cfg)

    async def full_disk(self, x, directory):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", full_disk)
    capfd.readouterr()
    with pytest.raises(CheckpointError) as e:
        save_checkpoint(str(tmp_path), 2, params, tiny_cfg)
    msg = str(e.value)
    assert "could not save step 2" in msg and "No space left on device" in msg, msg
    assert "older checkpoints are kept (the latest checkpoint on disk is step 1)" in msg, msg
    assert "\n" not in msg
    out, err = capfd.readouterr()
    assert "Traceback" not in err + out, err
    assert not [r for r in caplog.records if r.levelno >= 40], caplog.records
    assert os.listdir(checkpoint_dir(str(tmp_path))) == ["1"]
    monkeypatch.undo()
    assert leaves_equal(load_checkpoint(str(tmp_path))[0], params)


def test_a_writing_manager_removes_partial_steps(tmp_path, tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    save_checkpoint(str(tmp_path), 1, params, tiny_cfg)
    partial = os.path.join(checkpoint_dir(str(tmp_path)), "5.orbax-checkpoint-tmp")
    os.makedirs(os.path.join(partial, "params"))   # what a SIGKILL mid-save leaves
    load_checkpoint(str(tmp_path))                  # readers leave it alone
    assert os.path.isdir(partial)
    save_checkpoint(str(tmp_path), 2, params, tiny_cfg)
    assert sorted(os.listdir(checkpoint_dir(str(tmp_path)))) == ["1", "2"]


def test_unfinished_save_is_ignored(tmp_path, tiny_cfg):
    save_checkpoint(str(tmp_path), 2, init_params(tiny_cfg, jax.random.key(0)), tiny_cfg)
    # What a crash in the middle of saving step 9 leaves behind.
    os.makedirs(os.path.join(checkpoint_dir(str(tmp_path)), "9.orbax-checkpoint-tmp-123"))
    assert latest_step(str(tmp_path)) == 2
    load_checkpoint(str(tmp_path))


def test_single_line_error_from_cli_helper(tmp_path, capsys):
    from gpt_jax.cli.common import run
    with pytest.raises(SystemExit) as e:
        run(lambda: load_checkpoint(str(tmp_path / "missing")))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint directory") and err.count("\n") == 1


def test_save_into_a_file_is_one_line(tmp_path, tiny_cfg):
    from gpt_jax.errors import UserError
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="out_dir .*is a file"):
        save_checkpoint(str(tmp_path / "f"), 1, init_params(tiny_cfg, jax.random.key(0)),
                        tiny_cfg)


def test_resuming_a_params_only_checkpoint_says_what_it_is(tmp_path, tiny_cfg):
    """save_checkpoint writes no optimizer state: that is not damage, and the message says
    how to use it."""
    from gpt_jax.train.optimizer import make_optimizer
    from gpt_jax.train.state import abstract_state
    from gpt_jax.train.config import TrainConfig
    save_checkpoint(str(tmp_path), 1, init_params(tiny_cfg, jax.random.key(0)), tiny_cfg)
    tx, _ = make_optimizer(TrainConfig())
    with pytest.raises(CheckpointError, match="holds no optimizer state.*--init_from") as e:
        ckpt.restore(str(tmp_path), opt_state_target=abstract_state(tiny_cfg, tx).opt_state)
    assert "damaged" not in str(e.value)
    with pytest.raises(CheckpointError, match="non-negative integer, got True"):
        load_checkpoint(str(tmp_path), step=True)


def test_a_file_is_not_an_out_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match=r"f is a file, not a train.py out_dir"):
        load_checkpoint(str(tmp_path / "f"))


@pytest.mark.parametrize("damage,says", [
    ("rm config", r"its config directory \S+/3/config is missing"),
    ("rm config/metadata", r"its config cannot be read: File \S+/3/config/metadata not found"),
    ("rm meta/metadata", r"File \S+/3/meta/metadata not found"),
    ("rm params/_METADATA", r"its params metadata cannot be read: Metadata file \(named "
                            r"_METADATA\) does not exist"),
    ("garble params/_METADATA", r"its params metadata cannot be read: not valid JSON"),
])
def test_damage_says_what_is_missing(tmp_path, tiny_cfg, damage, says):
    """Not "(KeyError)" or "(FileNotFoundError)": which item or file of which step."""
    import shutil
    params = init_params(tiny_cfg, jax.random.key(0))
    for step in (2, 3):
        save_checkpoint(str(tmp_path), step, params, tiny_cfg)
    how, what = damage.split(" ")
    path = os.path.join(checkpoint_dir(str(tmp_path)), "3", what)
    if how == "rm":
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    else:
        with open(path, "w") as f:
            f.write("{not json")
    with pytest.raises(CheckpointError, match=r"step 3 .* is damaged: " + says +
                       r".*; intact steps: 2 \(load the latest with load_checkpoint\(.*step=2\)\)$"):
        load_checkpoint(str(tmp_path))
