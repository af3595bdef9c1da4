"""The Dense product laid out for XLA:CPU (gpt_jax/model/ops.py): the same product and gradients as
lax.dot_general, on XLA:CPU and with the CPU layouts off (as on GPU/TPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import gpt_jax.model.ops as ops
from gpt_jax.model.ops import dense_dot_general


@pytest.mark.parametrize("cpu", [True, False])
@pytest.mark.parametrize("d_in,d_out", [(16, 24), (24, 16)])
def test_dense_dot_general_equals_lax_and_its_gradients(monkeypatch, cpu, d_in, d_out):
    # A (B, T, in) input as the blocks use it; (16, 24) transposes x for the kernel gradient,
    # (24, 16) the narrower dy. With the CPU layouts off, no transposed copy is made at all.
    monkeypatch.setattr(ops, "cpu_layouts", lambda: cpu)
    x = jax.random.normal(jax.random.key(0), (3, 5, d_in))
    kernel = jax.random.normal(jax.random.key(1), (d_in, d_out))
    w = jax.random.normal(jax.random.key(2), (3, 5, d_out))
    dims = (((2,), (0,)), ((), ()))
    f = lambda dot: lambda x, k: jnp.sum(dot(x, k, dims) * w)
    grad = jax.value_and_grad(f(dense_dot_general), argnums=(0, 1))
    ours = jax.jit(grad)(x, kernel)
    ref = jax.value_and_grad(f(lax.dot_general), argnums=(0, 1))(x, kernel)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    assert ("optimization_barrier" in str(jax.make_jaxpr(grad)(x, kernel))) == cpu


def test_dense_dot_general_passes_other_contractions_through():
    # a contraction Dense never asks for, and explicit options, are lax.dot_general's
    x = jax.random.normal(jax.random.key(0), (4, 6))
    y = jax.random.normal(jax.random.key(1), (4, 5))
    dims = (((0,), (0,)), ((), ()))
    np.testing.assert_array_equal(dense_dot_general(x, y, dims), lax.dot_general(x, y, dims))
    k = jax.random.normal(jax.random.key(2), (6, 5))
    out = dense_dot_general(x, k, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    np.testing.assert_allclose(out, x @ k, rtol=1e-6)
