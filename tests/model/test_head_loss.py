"""The tied head fused with the cross-entropy (gpt_jax/model/head_loss.py) against autodiff through
the plain head and optax's loss."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpt_jax.model.head_loss as head_loss
from gpt_jax.model.head_loss import head_cross_entropy
from gpt_jax.model.gpt import PADDED_LOGIT, mask_vocab


@pytest.mark.parametrize("cpu", [True, False])
@pytest.mark.parametrize("vocab,n_valid", [(300, 300), (320, 300)])
def test_head_cross_entropy_equals_optax_loss_and_gradients(monkeypatch, cpu, vocab, n_valid):
    # Logits spread wide enough (|logit| up to ~20) that the softmax is far from uniform; with
    # padded ids (n_valid < vocab) they must get no gradient. cpu=False: the embedding gradient
    # as GPU/TPU take it (no transposed copy).
    monkeypatch.setattr(head_loss, "cpu_layouts", lambda: cpu)
    x = 2 * jax.random.normal(jax.random.key(0), (24, 32))
    emb = jax.random.normal(jax.random.key(1), (vocab, 32)) / 2
    targets = jax.random.randint(jax.random.key(2), (24,), 0, n_valid)

    def reference(x, emb):
        logits = mask_vocab(x @ emb.T, n_valid, PADDED_LOGIT)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    loss, (gx, ge) = jax.value_and_grad(head_cross_entropy, argnums=(0, 1))(
        x, emb, targets, n_valid)
    ref_loss, (rx, re) = jax.value_and_grad(reference, argnums=(0, 1))(x, emb)
    assert float(ref_loss) > 1.0
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for a, b in ((gx, rx), (ge, re)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    assert float(jnp.abs(ge[n_valid:]).max(initial=0.0)) == 0.0
    # under jit, scaled by an outer factor (the cotangent is not assumed to be 1)
    g2 = jax.jit(jax.grad(lambda x: 3.0 * head_cross_entropy(x, emb, targets, n_valid)))(x)
    np.testing.assert_allclose(g2, 3.0 * rx, rtol=0, atol=3e-5 * float(jnp.max(jnp.abs(rx))))


def test_head_cross_entropy_in_bfloat16():
    # bfloat16 hidden states and embedding: the loss stays float32 and within bfloat16 rounding
    # of the float32 reference; gradients come back in the inputs' dtype.
    x = 2 * jax.random.normal(jax.random.key(0), (24, 32))
    emb = jax.random.normal(jax.random.key(1), (300, 32)) / 2
    targets = jax.random.randint(jax.random.key(2), (24,), 0, 300)
    ref, (rx, re) = jax.value_and_grad(head_cross_entropy, argnums=(0, 1))(x, emb, targets, 300)
    bf = lambda a: a.astype(jnp.bfloat16)
    loss, (gx, ge) = jax.value_and_grad(head_cross_entropy, argnums=(0, 1))(
        bf(x), bf(emb), targets, 300)
    assert loss.dtype == jnp.float32 and gx.dtype == ge.dtype == jnp.bfloat16
    np.testing.assert_allclose(loss, ref, rtol=2e-2)
    for a, b in ((gx, rx), (ge, re)):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0,
                                   atol=3e-2 * float(jnp.max(jnp.abs(b))))
