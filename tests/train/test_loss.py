"""Next-token cross-entropy (gpt_jax/train/loss.py)."""
import jax
import jax.numpy as jnp
import pytest

from conftest import random_batch
from gpt_jax.model.config import GPTConfig
from gpt_jax.train.loss import cross_entropy
from gpt_jax.model.gpt import GPT, init_params
from gpt_jax.train.steps import grads_and_loss


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
