"""Layer stacking for scan_layers (gpt_jax/model/stacking.py)."""
import jax
import numpy as np
import optax

from gpt_jax import GPTConfig, init_params
from gpt_jax.model.stacking import map_param_trees, stack_layers, unstack_layers


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


def test_stack_tree_converts_a_whole_state_once():
    """stack_tree / unstack_tree (what a scan_layers run and its checkpoints use) convert
    params and Adam's moments together, and leave stacked dicts as they are."""
    from gpt_jax.model.stacking import stack_tree, unstack_tree
    cfg = GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=128)
    params = init_params(cfg, jax.random.key(0))
    state = (params, optax.adamw(1e-3).init(params))
    stacked = stack_tree(state, cfg.n_layer)
    assert stacked[0]["h"]["mlp"]["c_fc"]["kernel"].shape == (3, 32, 128)
    assert "h_0" not in stacked[1][0].mu and stacked[1][0].mu["h"]["ln_1"]["scale"].shape == (3, 32)
    again = stack_tree(stacked, cfg.n_layer)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, stacked)
    jax.tree_util.tree_map(np.testing.assert_array_equal, unstack_tree(stacked), state)
