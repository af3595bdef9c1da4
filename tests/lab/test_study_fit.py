"""Seeds trained side by side (gpt_jax/lab/study/fit.py): each seed of a vmapped run is the run
of that seed alone, and its first loss is the library's loss at init on its first batch."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.data.tokens import BatchSampler
from gpt_jax.lab.study.fit import mean_sd, seed_slice, train_seeds
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import init_params
from gpt_jax.train.loss import loss_fn


class Tokens:   # what BatchSampler reads of a TokenData
    def __init__(self, train, val):
        self.splits = {"train": np.asarray(train, np.int32), "val": np.asarray(val, np.int32)}


def test_vmapped_seeds_are_the_separate_runs():
    cfg = GPTConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=32, block_size=16)
    rng = np.random.default_rng(0)
    data = Tokens(rng.integers(0, 64, 4000), rng.integers(0, 64, 1000))

    def loss(p, b, k):
        return loss_fn(p, cfg, b), jnp.int32(b[:, 1:].size)
    kw = dict(steps=4, lr=1e-2, warmup=1, batch_size=4)
    both = train_seeds(cfg, loss, data, seeds=(0, 1), **kw)
    alone = train_seeds(cfg, loss, data, seeds=(1,), **kw)
    np.testing.assert_allclose(both.losses[1], alone.losses[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(seed_slice(both.params, 1)),
                    jax.tree.leaves(seed_slice(alone.params, 0))):
        # Adam divides by sqrt(v): float noise of the batched matmuls shows at ~1e-5 after 4 steps
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert not np.allclose(both.losses[0], both.losses[1])           # seeds differ
    assert (both.supervised == 4 * 16).all()
    batch = BatchSampler(data, block_size=16, batch_size=4, seed=1).train_batch(0)[0]
    first = loss_fn(init_params(cfg, jax.random.key(1)), cfg, jnp.asarray(batch))
    assert both.losses[1, 0] == pytest.approx(float(first), rel=1e-5)


def test_mean_sd_is_the_sample_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_sd([5.0]) == (5.0, 0.0)
