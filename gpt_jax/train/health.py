"""Training-health metrics, computed inside the jitted train step (as levanter's watch and
nanodo's internal metrics): norms per parameter group and the size of the update.

Groups are the top-level parameters: wte, wpe, ln_f and one per layer, h_0 ... h_{L-1}. With
scan_layers the layers are stacked under "h" (a leading layer axis on every leaf): the
per-layer norms are reductions over every axis but that one, so both layouts give the same keys.
On a mesh the reductions run over the sharded arrays (XLA adds the collectives); the results
are replicated scalars like the loss.

Keys (float32 scalars): grad_norm/<group>, param_norm/<group>, param_norm (global),
update_ratio (|update| / |params|, global, of the update the optimizer computed), clipped
(1.0 when the pre-clip gradient norm reached grad_clip).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _sumsq(x, keep_leading: bool):
    x = jnp.square(x.astype(jnp.float32))
    return jnp.sum(x, axis=tuple(range(1, x.ndim))) if keep_leading else jnp.sum(x)


def group_sumsq(tree: dict) -> dict:
    """{group: sum of squares} over the top-level groups of a params-shaped tree; the stacked
    "h" of scan_layers becomes h_0 ... h_{L-1}."""
    out = {}
    for name, sub in tree.items():
        stacked = name == "h"
        total = sum(_sumsq(x, stacked) for x in jax.tree_util.tree_leaves(sub))
        if stacked:   # (L,)
            out.update({f"h_{i}": total[i] for i in range(total.shape[0])})
        else:
            out[name] = total
    return out


def health_metrics(params, grad_sumsq: dict, updates, grad_norm, grad_clip: float) -> dict:
    """The health keys of one step (see the module docstring); params are the weights before
    the update, grad_sumsq = group_sumsq(pre-clip gradients) (the step takes its global
    gradient norm from them too: one pass over the gradients), updates what the optimizer
    would add."""
    g2, p2 = grad_sumsq, group_sumsq(params)
    m = {f"grad_norm/{k}": jnp.sqrt(v) for k, v in g2.items()}
    m.update({f"param_norm/{k}": jnp.sqrt(v) for k, v in p2.items()})
    param_norm = jnp.sqrt(sum(p2.values()))
    m["param_norm"] = param_norm
    m["update_ratio"] = jnp.sqrt(sum(group_sumsq(updates).values())) / param_norm
    clipped = grad_norm >= grad_clip if grad_clip > 0 else jnp.zeros((), bool)
    m["clipped"] = clipped.astype(jnp.float32)
    return m
