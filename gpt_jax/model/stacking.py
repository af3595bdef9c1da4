"""Layer stacking for scan_layers: the GPT-2 layout (h_0, h_1, ...) that checkpoints, HF files
and sample.py see, and the stacked one ("h", a leading layer axis on every leaf) that a
scan_layers run computes with (nn.scan over one compiled block).

    stacked = stack_tree(state_or_params, cfg.n_layer)   # for the run
    gpt2 = unstack_tree(stacked)                          # for a checkpoint
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def stack_layers(params: dict, n_layer: int) -> dict:
    """h_0..h_{L-1} -> "h" with a leading layer axis on every leaf (the scan_layers layout)."""
    out = {k: v for k, v in params.items() if not k.startswith("h_")}
    layers = [params[f"h_{i}"] for i in range(n_layer)]
    out["h"] = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *layers)
    return out


def unstack_layers(params: dict) -> dict:
    """The inverse of stack_layers: the GPT-2 layout that checkpoints and HF files hold."""
    if "h" not in params:
        return params
    out = {k: v for k, v in params.items() if k != "h"}
    n_layer = jax.tree_util.tree_leaves(params["h"])[0].shape[0]
    for i in range(n_layer):
        out[f"h_{i}"] = jax.tree_util.tree_map(lambda x: x[i], params["h"])
    return out


def map_param_trees(fn, tree):
    """Apply fn to every parameter-shaped dict inside tree (params, and Adam's mu and nu inside
    an optax state), so a whole train state converts between layouts in one call."""
    is_params = lambda x: isinstance(x, dict) and ("wte" in x)
    return jax.tree_util.tree_map(lambda x: fn(x) if is_params(x) else x, tree,
                                  is_leaf=is_params)


def stack_tree(tree, n_layer: int):
    """Params, or anything holding params-shaped dicts (an optax state), with every GPT-2
    layout dict stacked; dicts already stacked are left as they are."""
    return map_param_trees(lambda p: p if "h" in p else stack_layers(p, n_layer), tree)


def unstack_tree(tree):
    """The inverse of stack_tree: the GPT-2 layout that checkpoints hold."""
    return map_param_trees(unstack_layers, tree)
