"""Run by tests/train/test_scale.py in a subprocess with 8 CPU devices (XLA_FLAGS set by the test,
never for the whole suite): trains a tiny model on several meshes and run settings in one
process and writes what the test compares.

    python tests/support/scale_worker.py OUT_DIR   ->  OUT_DIR/result.json, OUT_DIR/grads_<name>.npz
"""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from gpt_jax.model.sharding import batch_sharding, make_global_batch, make_mesh, replicated  # noqa: E402
from gpt_jax.train.optimizer import make_optimizer  # noqa: E402
from gpt_jax.model.stacking import unstack_tree  # noqa: E402
from gpt_jax.train.state import new_state  # noqa: E402
from gpt_jax.train.steps import grads_and_loss, make_model, make_train_step  # noqa: E402
from gpt_jax.train.config import TrainConfig  # noqa: E402

STEPS = 5
TC = TrainConfig.from_dict(dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=256,
                                batch_size=8, warmup_iters=2, lr_decay_iters=100,
                                learning_rate=3e-3))
# (name, mesh spec, remat, scan_layers); "1dev" is the reference.
VARIANTS = [("1dev", None, False, False), ("data8", "data=8", False, False),
            ("fsdp8", "fsdp=8", False, False), ("d2f4", "data=2,fsdp=4", False, False),
            ("fsdp8_remat", "fsdp=8", True, False), ("d2f4_scan", "data=2,fsdp=4", False, True),
            ("data8_remat_scan", "data=8", True, True)]


def per_device_bytes(tree) -> int:
    """Bytes that device 0 holds of a pytree of global arrays."""
    dev = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree_util.tree_leaves(tree)
               for s in x.addressable_shards if s.device == dev)


def main(out_dir):
    assert jax.device_count() == 8, jax.devices()
    cfg = TC.model
    tx, schedule = make_optimizer(TC)
    batches = np.random.default_rng(0).integers(0, cfg.vocab_size, (STEPS, 1, TC.batch_size,
                                                                    cfg.block_size + 1),
                                                dtype=np.int32)
    result = {}
    for name, spec, remat, scan in VARIANTS:
        mesh = make_mesh(spec, jax.devices()[:1] if spec is None else None)
        state = new_state(cfg, tx, mesh, seed=0, scan_layers=scan)
        # first-step gradients, through the same model the step uses, on the same shardings
        model = make_model(cfg, remat=remat, scan_layers=scan, mesh=mesh)
        grad_fn = jax.jit(lambda p, b: grads_and_loss(p, cfg, b, None, model=model),
                          in_shardings=(jax.tree_util.tree_map(lambda x: x.sharding,
                                                               state.params),
                                        batch_sharding(mesh)),
                          out_shardings=(replicated(mesh), None))
        first = make_global_batch(batches[0], mesh, batches[0].shape)
        loss0, grads = grad_fn(state.params, first)
        grads = jax.device_get(unstack_tree(grads))
        flat = {jax.tree_util.keystr(p): np.asarray(g)
                for p, g in jax.tree_util.tree_leaves_with_path(grads)}
        np.savez(os.path.join(out_dir, f"grads_{name}.npz"), **flat)
        info = {"loss0": float(loss0),
                "param_bytes_total": sum(x.nbytes for x in jax.tree_util.tree_leaves(
                    state.params)),
                "param_bytes_device0": per_device_bytes(state.params),
                "opt_bytes_device0": per_device_bytes(state.opt_state),
                "opt_bytes_total": sum(x.nbytes for x in jax.tree_util.tree_leaves(
                    state.opt_state)),
                "wte_spec": list(state.params["wte"]["embedding"].sharding.spec),
                "wte_shard_shape": list(state.params["wte"]["embedding"]
                                        .addressable_shards[0].data.shape)}
        step = make_train_step(cfg, tx, schedule, mesh=mesh, remat=remat, scan_layers=scan)
        losses = []
        for b in batches:
            state, m = step(state, make_global_batch(b, mesh, b.shape))
            losses.append(float(m["loss"]))
            # the health metrics of the first step (gpt_jax/train/health.py), per layer
            info.setdefault("health", {k: float(v) for k, v in m.items()})
        info["losses"] = losses
        info["loss0_after"] = float(grad_fn(state.params, first)[0])
        result[name] = info
        print(name, info, flush=True)
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
