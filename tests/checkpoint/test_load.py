"""gpt_jax.load_model: one call for a train.py out_dir (latest or a chosen step) and a Hugging
Face directory, the same params as the loader each source has; --step/step= only where it
means something."""
import jax
import numpy as np
import pytest

import gpt_jax

CFG = gpt_jax.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=256)


def same(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


def test_out_dir_latest_and_step(tmp_path):
    out = str(tmp_path / "run")
    p1, p2 = (gpt_jax.init_params(CFG, jax.random.key(i)) for i in (1, 2))
    gpt_jax.save_checkpoint(out, 1, p1, CFG)
    gpt_jax.save_checkpoint(out, 2, p2, CFG)
    params, cfg = gpt_jax.load_model(out)
    assert cfg == CFG and same(params, p2) and not same(params, p1)
    params, _ = gpt_jax.load_model(out, step=1)
    assert same(params, p1)


def test_hugging_face_directory(tmp_path):
    p = gpt_jax.init_params(CFG, jax.random.key(3))
    gpt_jax.to_hf(p, CFG, str(tmp_path / "hf"))
    params, cfg = gpt_jax.load_model(str(tmp_path / "hf"))
    want, want_cfg = gpt_jax.from_hf(str(tmp_path / "hf"))
    assert cfg == want_cfg and same(params, want) and same(params, p)
    with pytest.raises(gpt_jax.UserError, match=r"^step=4 applies to a train.py out_dir .* is "
                                                r"a Hugging Face directory.*drop step=4$"):
        gpt_jax.load_model(str(tmp_path / "hf"), step=4)


def test_missing_source_is_one_line(tmp_path):
    with pytest.raises(gpt_jax.UserError) as e:
        gpt_jax.load_model(str(tmp_path / "nothing-here"))
    assert "\n" not in str(e.value)
