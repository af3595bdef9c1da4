"""TrainState: what a training step carries (step, params, optimizer state, RNG key), built
directly in its shards on a mesh, or placed there from restored parts.

One rule shards the whole state (sharding.tree_shardings): parameters and their Adam moments
along their largest fsdp-divisible dimension, scalars and the RNG key replicated. With
scan_layers the state holds the layers stacked under "h" (gpt_jax/model/stacking.py); checkpoints
always hold the GPT-2 layout, so restored parts are stacked here on the way in.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_jax.model.config import GPTConfig
from gpt_jax.train.guard import guard_from_meta, init_guard
from gpt_jax.model.gpt import init_params
from gpt_jax.model.sharding import replicated, tree_shardings
from gpt_jax.model.stacking import stack_tree


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 (): updates done so far
    params: Any
    opt_state: Any
    rng: jax.Array         # typed key; the dropout key of step s is fold_in(rng, s)
    guard: Any = None      # the spike guard's statistics (gpt_jax/train/guard.py); None: eval only


def init_state(params, tx: optax.GradientTransformation, rng) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=rng, guard=init_guard())


def _for_run(tree, cfg: GPTConfig, scan_layers: bool):
    """tree (GPT-2 layout) in the layout the run computes with."""
    return stack_tree(tree, cfg.n_layer) if scan_layers else tree


def abstract_state(cfg: GPTConfig, tx: optax.GradientTransformation, *,
                   scan_layers: bool = False) -> TrainState:
    """The TrainState as ShapeDtypeStructs (the run's layout), without allocating anything."""
    return jax.eval_shape(lambda: init_state(
        _for_run(init_params(cfg, jax.random.key(0)), cfg, scan_layers), tx,
        jax.random.key(0)))


def state_shardings(cfg: GPTConfig, tx: optax.GradientTransformation, mesh, *,
                    scan_layers: bool = False) -> TrainState:
    """Where every leaf of the TrainState lives on `mesh`: parameters and their Adam moments
    along their largest fsdp-divisible dimension, scalars, the RNG key and the spike guard's
    statistics replicated (every process reads those whole when it saves meta)."""
    shardings = tree_shardings(abstract_state(cfg, tx, scan_layers=scan_layers), mesh)
    return shardings.replace(guard=jax.tree_util.tree_map(lambda _: replicated(mesh),
                                                          shardings.guard))


def new_state(cfg: GPTConfig, tx: optax.GradientTransformation, mesh, *, seed: int,
              params=None, scan_layers: bool = False) -> TrainState:
    """A fresh TrainState placed on `mesh`: GPT-2 init from key(seed) (or the given params, in
    the GPT-2 layout), dropout key key(seed + 1). Initialised inside jit with out_shardings,
    so each device only ever materialises its own shards (the big-model path), and the values
    do not depend on the mesh (JAX's partitionable threefry)."""
    shardings = state_shardings(cfg, tx, mesh, scan_layers=scan_layers)
    make = lambda p: init_state(_for_run(p, cfg, scan_layers), tx, jax.random.key(seed + 1))
    if params is None:
        return jax.jit(lambda: make(init_params(cfg, jax.random.key(seed))),
                       out_shardings=shardings)()
    # Host copies: every process holds the same values, which jit places as a global array.
    return jax.jit(make, out_shardings=shardings)(jax.device_get(params))


def place_state(params, opt_state, step: int, rng_key_data, shardings: TrainState, *,
                cfg: GPTConfig, scan_layers: bool = False, guard=None) -> TrainState:
    """A TrainState from restored parts (GPT-2 layout, any sharding) on `shardings`, in the run
    layout; params and opt_state are donated (no second copy of a big model). guard: the spike
    guard's statistics as meta["guard"] holds them (None: empty ones)."""
    def make(p, o, s, k, g):
        return TrainState(step=s, params=_for_run(p, cfg, scan_layers),
                          opt_state=_for_run(o, cfg, scan_layers),
                          rng=jax.random.wrap_key_data(k), guard=g)
    return jax.jit(make, out_shardings=shardings, donate_argnums=(0, 1))(
        params, opt_state, np.asarray(step, np.int32), np.asarray(rng_key_data, np.uint32),
        guard_from_meta(guard))


def place_params(params, param_shardings, *, cfg: GPTConfig, scan_layers: bool = False):
    """Parameters (GPT-2 layout, any sharding or host arrays) on param_shardings, run layout."""
    return jax.jit(lambda p: _for_run(p, cfg, scan_layers),
                   out_shardings=param_shardings)(params)
