"""bench.py's HF Flax peer (gpt_jax/lab/bench/flax_peer.py, flax_worker.py). It needs a side
environment with transformers<5 and flax (docs/benchmarks.md): set GPT_JAX_FLAX_PYTHON to its
python to run the test against it; without it that test is skipped. What needs no side
environment (the note without --flax_python, the one-line errors) is in test_bench.py."""
import os

import jax
import numpy as np
import pytest

from gpt_jax.model.gpt import init_params
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.train.state import init_state
from gpt_jax.train.steps import make_train_step
from gpt_jax.train.config import TrainConfig

FLAX_PYTHON = os.environ.get("GPT_JAX_FLAX_PYTHON")


@pytest.mark.skipif(not FLAX_PYTHON, reason="no side environment (GPT_JAX_FLAX_PYTHON unset)")
def test_flax_peer_trains_the_same_model_with_the_same_optimizer():
    # Its losses before and after one AdamW update (full learning rate, clipping on) equal
    # ours: the same model, weights, batches and recipe, so its timings are comparable.
    from gpt_jax.lab.bench.flax_peer import FlaxPeer, check_flax_python
    check_flax_python(FLAX_PYTHON)
    tc = TrainConfig.from_dict(dict(n_layer=2, n_head=2, n_embd=64, block_size=32,
                                    batch_size=2, vocab_size=512, warmup_iters=1,
                                    learning_rate=3e-3, grad_clip=0.5))
    cfg = tc.model
    params = init_params(cfg, jax.random.key(0))
    batches = np.random.default_rng(0).integers(0, 512, (2, 2, 33), dtype=np.int32)
    tx, sched = make_optimizer(tc)
    step = make_train_step(cfg, tx, sched, donate=False)
    state = init_state(params, tx, jax.random.key(1))
    ours = []
    for b in batches:
        state, m = step(state, b[None])
        ours.append(float(m["loss"]))
    peer = FlaxPeer(FLAX_PYTHON, params, cfg, tc, batches)
    try:
        theirs = [peer.loss0, peer()]
        assert len(peer.cpu_seconds) == 1 and peer.cpu_seconds[0] > 0
    finally:
        peer.close()
    assert abs(ours[1] - ours[0]) > 0.01          # the update moved the loss
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
