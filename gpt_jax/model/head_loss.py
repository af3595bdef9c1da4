"""The tied LM head fused with the next-token cross-entropy: the training loss without the
(B, T, V) logits ever leaving one function (GPT(..., targets=) ends here; loss.py's loss_fn
asks for it).

The head is most of a small model's step (at 4 layers x 256 about 80% of the FLOPs), and the
float32 logits are its largest arrays: autodiff of softmax cross-entropy writes the logits, the
softmax, its gradient (with a scatter for the labels) and, for the embedding gradient, a
transposed copy of that, each (N, V) float32. The custom VJP below keeps one.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gpt_jax.model.ops import cpu_layouts, transposed


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def head_cross_entropy(x, embedding, targets, n_valid: int):
    """Mean cross-entropy of the tied head, float32: the same value and gradients as
    softmax_cross_entropy(x @ embedding.T with ids >= n_valid masked, targets).mean().

    x: (N, C) final hidden states; embedding: (V, C) (wte, in x's dtype); targets: int (N,),
    all < n_valid. Logits, softmax statistics and the loss are float32. The one (N, V) float32
    array lives from the head's matmul to its gradient: the logits, overwritten in place by
    their exponentials (all the backward pass needs besides the row sums), then by
    d(loss)/d(logits) (softmax minus one-hot, no scatter), which the two gradient matmuls read.
    """
    return _fwd(x, embedding, targets, n_valid)[0]


def _fwd(x, embedding, targets, n_valid):
    logits = jax.lax.dot_general(x, embedding, (((1,), (1,)), ((), ())),
                                 preferred_element_type=jnp.float32)                 # (N, V)
    if n_valid < logits.shape[1]:   # padded ids: exp() below gives them exactly 0
        logits = jnp.where(jnp.arange(logits.shape[1]) < n_valid, logits, -jnp.inf)
    m = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - m)                                                          # (N, V)
    total = jnp.sum(e, axis=-1)                                                      # (N,)
    # The label's logit from its embedding row rather than from `logits`: then nothing reads
    # the logits after e, and XLA writes e (and later the gradient) over them in place.
    label_logit = jnp.einsum("nc,nc->n", x, embedding[targets],
                             preferred_element_type=jnp.float32)
    loss = jnp.mean(m[:, 0] + jnp.log(total) - label_logit)
    return loss, (x, embedding, targets, e, total)


def _bwd(n_valid, res, g):
    x, embedding, targets, e, total = res
    scale = g / e.shape[0]
    ids = jnp.arange(e.shape[1])[None, :]
    dlogits = (e * (scale / total)[:, None]
               - jnp.where(ids == targets[:, None], scale, 0.0)).astype(x.dtype)   # (N, V)
    dx = jax.lax.dot_general(dlogits, embedding, (((1,), (0,)), ((), ())))       # (N, C)
    if cpu_layouts():   # (C, N) @ (N, V) from a transposed x (see gpt_jax/model/ops.py), then .T;
        # the barrier keeps XLA from folding that .T into the matmul as a slow-path form
        demb = jax.lax.optimization_barrier(jnp.dot(transposed(x), dlogits)).T      # (V, C)
    else:
        demb = jax.lax.dot_general(dlogits, x, (((0,), (0,)), ((), ())))         # (V, C)
    return dx, demb.astype(embedding.dtype), None


head_cross_entropy.defvjp(_fwd, _bwd)
