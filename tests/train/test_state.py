"""TrainState on a mesh (gpt_jax/train/state.py): built fresh, or placed from a checkpoint's parts."""
import jax
import numpy as np
import pytest

from conftest import tiny_tc
from gpt_jax.model.gpt import init_params
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.model.sharding import make_mesh
from gpt_jax.model.stacking import stack_tree, unstack_tree
from gpt_jax.train.state import (abstract_state, new_state, place_params, place_state,
                           state_shardings)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


# stacking makes new buffers, so place_state's donation cannot reuse the restored ones
@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
@pytest.mark.parametrize("scan_layers", [False, True])
def test_fresh_and_restored_states_agree(scan_layers):
    """new_state is GPT-2 init from key(seed) (dropout key key(seed + 1)) in the run's layout,
    shaped as abstract_state says; a checkpoint's parts (GPT-2 layout) placed back with
    place_state / place_params give the same state."""
    tc = tiny_tc()
    cfg, (tx, _) = tc.model, make_optimizer(tc)
    mesh = make_mesh(None, jax.devices()[:1])
    state = new_state(cfg, tx, mesh, seed=3, scan_layers=scan_layers)
    params = init_params(cfg, jax.random.key(3))
    assert_trees_equal(state.params, stack_tree(params, cfg.n_layer) if scan_layers else params)
    np.testing.assert_array_equal(jax.random.key_data(state.rng),
                                  jax.random.key_data(jax.random.key(4)))
    shapes = lambda t: jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), t)
    assert shapes(state) == shapes(abstract_state(cfg, tx, scan_layers=scan_layers))

    saved = jax.device_get((unstack_tree(state.params), unstack_tree(state.opt_state)))
    shardings = state_shardings(cfg, tx, mesh, scan_layers=scan_layers)
    placed = place_state(*saved, 0, jax.random.key_data(state.rng), shardings, cfg=cfg,
                         scan_layers=scan_layers)
    np.testing.assert_array_equal(jax.random.key_data(placed.rng),
                                  jax.random.key_data(state.rng))
    assert_trees_equal((placed.step, placed.params, placed.opt_state),
                       (state.step, state.params, state.opt_state))
    assert_trees_equal(place_params(saved[0], shardings.params, cfg=cfg,
                                    scan_layers=scan_layers), state.params)
