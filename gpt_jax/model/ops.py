"""Matrix products laid out for XLA:CPU: the Dense layers' product (dense_dot_general) and the
transposed copies it and the fused head + loss (head_loss.py) use for their weight gradients.

XLA:CPU hands a matmul to its fast GEMM library (YNNPACK) only when the left operand contracts
over its last axis. Autodiff of x @ W gives the weight gradient as x^T @ dy, which contracts x
over its first (token) axis: XLA:CPU then takes a slower path that also copies the other
operand, per call. A transposed copy of the narrower operand, kept by an optimization barrier
from being folded back into the matmul, turns every weight gradient into the fast form.

These are XLA:CPU tricks: on GPU and TPU the GEMM reads either orientation at no cost, so the
extra copy would be pure overhead; there (cpu_layouts() is False) the plain products are used.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cpu_layouts() -> bool:
    """Whether to lay matmul operands out for XLA:CPU (decided at trace time): here, in the
    fused head + loss and in the decode step's (out, in) kernels (decode.py)."""
    return jax.default_backend() == "cpu"


def transposed(a):
    """a.T (2-D) materialised: the barrier keeps XLA from folding the transpose back into the
    matmul that reads it, which would undo the point of the copy."""
    return jax.lax.optimization_barrier(a.T)


def weight_grad(x, dy):
    """x^T @ dy for x (N, in) and dy (N, out) -> (in, out), as YNNPACK takes it on XLA:CPU: with
    the narrower of x and dy transposed: x^T @ dy directly, or (dy^T @ x)^T, whose final
    (out, in) -> (in, out) copy is only weight-sized (transposing the 4C-wide MLP activation
    instead would cost more than it saves)."""
    if x.shape[1] <= dy.shape[1]:
        return jnp.dot(transposed(x), dy)
    return jax.lax.optimization_barrier(jnp.dot(transposed(dy), x)).T


@jax.custom_vjp
def _matmul(x, kernel):
    # x (..., in) @ kernel (in, out) -> (..., out): the product nn.Dense computes.
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


def _matmul_fwd(x, kernel):
    return _matmul(x, kernel), (x, kernel)


def _matmul_bwd(res, dy):
    x, kernel = res
    dx = jax.lax.dot_general(dy, kernel, (((dy.ndim - 1,), (1,)), ((), ())))   # (..., in)
    dk = weight_grad(x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1]))  # (in, out)
    return dx, dk


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """nn.Dense's dot_general (pass it as `dot_general=`): the same product and gradients as
    lax.dot_general, with the kernel gradient from weight_grad on XLA:CPU. Anything but Dense's
    plain (..., in) x (in, out) contraction, and every other backend, goes to lax.dot_general."""
    plain = (dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())) and rhs.ndim == 2
             and precision is None and preferred_element_type is None)
    if plain and cpu_layouts():
        return _matmul(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
