import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import CheckpointError, init_params, load_checkpoint, save_checkpoint
from gpt_jax.checkpoint import checkpoint_dir, latest_step


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


def test_params_that_do_not_fit_their_config(tmp_path, tiny_cfg):
    wrong = init_params(tiny_cfg.replace(n_embd=32), jax.random.key(0))
    save_checkpoint(str(tmp_path), 1, wrong, tiny_cfg)  # config says 64 wide, tensors are 32
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(str(tmp_path))


def test_unfinished_save_is_ignored(tmp_path, tiny_cfg):
    save_checkpoint(str(tmp_path), 2, init_params(tiny_cfg, jax.random.key(0)), tiny_cfg)
    # What a crash in the middle of saving step 9 leaves behind.
    os.makedirs(os.path.join(checkpoint_dir(str(tmp_path)), "9.orbax-checkpoint-tmp-123"))
    assert latest_step(str(tmp_path)) == 2
    load_checkpoint(str(tmp_path))


def test_single_line_error_from_cli_helper(tmp_path, capsys):
    from gpt_jax.cli import run
    with pytest.raises(SystemExit) as e:
        run(lambda: load_checkpoint(str(tmp_path / "missing")))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint directory") and err.count("\n") == 1
