"""Layer stacking for scan_layers (gpt_jax/stacking.py)."""
import jax
import numpy as np
import optax

from gpt_jax import GPTConfig, init_params
from gpt_jax.stacking import map_param_trees, stack_layers, unstack_layers


def test_stack_unstack_round_trip():
    cfg = GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=128)
    params = init_params(cfg, jax.random.key(0))
    back = unstack_layers(stack_layers(params, 3))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)
    # A whole optimizer state converts in one call (Adam's mu and nu mirror the params).
    state = optax.adamw(1e-3).init(stack_layers(params, 3))
    unstacked = map_param_trees(unstack_layers, state)
    assert jax.tree_util.tree_structure(unstacked) == \
        jax.tree_util.tree_structure(optax.adamw(1e-3).init(params))
