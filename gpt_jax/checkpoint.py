"""Checkpoints: an orbax CheckpointManager directory `out_dir/checkpoints/`.

Each step is a Composite of `params` (StandardSave), `opt_state` (StandardSave, training only),
`meta` (JsonSave: step, rng key data, sampler state) and `config` (JsonSave: GPTConfig fields).
Parameters are always stored in the unstacked GPT-2 layout (h_0, h_1, ...). Orbax writes each
step to a temporary directory and renames it when complete, so a crash mid-save never leaves a
step that looks finished; restore ignores the unfinished ones.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from gpt_jax.config import GPTConfig
from gpt_jax.errors import CheckpointError, ConfigError
from gpt_jax.model import param_shapes

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(out_dir: str) -> str:
    return os.path.join(os.path.abspath(out_dir), CHECKPOINT_DIR)


def manager(out_dir: str, *, max_to_keep: Optional[int] = 3, create: bool = True,
            async_save: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager over out_dir/checkpoints (async saves are opt-in: the caller must
    then call wait_until_finished() before it exits)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(out_dir), options=options)


def save(mngr: ocp.CheckpointManager, step: int, params, cfg: GPTConfig, *,
         opt_state=None, meta: Optional[dict] = None, force: bool = True) -> None:
    """Save one step. meta must be JSON-serialisable (store RNG keys as key_data lists)."""
    items = dict(params=ocp.args.StandardSave(params),
                 meta=ocp.args.JsonSave({"step": int(step), **(meta or {})}),
                 config=ocp.args.JsonSave(cfg.to_dict()))
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
    mngr.save(int(step), args=ocp.args.Composite(**items), force=force)


def save_checkpoint(out_dir: str, step: int, params, cfg: GPTConfig, *,
                    max_to_keep: Optional[int] = 3) -> None:
    """A params-only checkpoint that sample.py and load_checkpoint can read."""
    with manager(out_dir, max_to_keep=max_to_keep) as mngr:
        save(mngr, step, params, cfg)
        mngr.wait_until_finished()


def _existing_manager(out_dir: str) -> ocp.CheckpointManager:
    path = checkpoint_dir(out_dir)
    if not os.path.isdir(out_dir):
        raise CheckpointError(f"checkpoint directory {out_dir} does not exist: train a model "
                              f"first (python train.py --out_dir {out_dir}) or pass another one")
    if not os.path.isdir(path):
        raise CheckpointError(f"{out_dir} holds no checkpoints/ directory: it is not a "
                              f"train.py out_dir (train first, or pass the right --out_dir)")
    return manager(out_dir, max_to_keep=None, create=False)


def resolve_step(mngr: ocp.CheckpointManager, out_dir: str, step: Optional[int]) -> int:
    steps = mngr.all_steps()
    if not steps:
        raise CheckpointError(f"no finished checkpoint in {checkpoint_dir(out_dir)}: "
                              f"train (or resume) until one is saved")
    if step is None:
        return max(steps)
    if step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {out_dir}; "
                              f"available: {sorted(steps)}")
    return step


def _read_config(mngr, step: int, out_dir: str) -> GPTConfig:
    try:
        raw = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
        return GPTConfig.from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint step {step} in {out_dir} has an invalid config: {e}")
    except Exception as e:  # missing or unreadable JSON item
        raise CheckpointError(f"checkpoint step {step} in {out_dir} has no readable config "
                              f"({type(e).__name__}): it is damaged or not a gpt_jax checkpoint")


def check_config(found: GPTConfig, expected: GPTConfig, where: str) -> None:
    diff = found.architecture_diff(expected)
    if diff:
        raise CheckpointError(f"the checkpoint in {where} does not match the requested model "
                              f"(checkpoint vs requested: {'; '.join(diff)}); use matching "
                              f"flags or another --out_dir")


def abstract_tree(tree, sharding=None):
    """ShapeDtypeStructs that orbax restores onto: each leaf keeps its own sharding when it has
    one (arrays, sharded structs), else goes to `sharding` (default: this process's first
    device; jax.devices()[0] belongs to process 0 only)."""
    default = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def leaf(x):
        s = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                    sharding=s if isinstance(s, jax.sharding.Sharding) else default)
    return jax.tree_util.tree_map(leaf, tree)


def restore(out_dir: str, step: Optional[int] = None, *, params_target=None,
            opt_state_target=None, expected_config: Optional[GPTConfig] = None
            ) -> dict[str, Any]:
    """Restore {"step", "config", "params", "meta"[, "opt_state"]} from out_dir.

    params_target / opt_state_target: pytrees of arrays or ShapeDtypeStructs (with shardings)
    to restore onto; params default to the config's shapes on the first device.
    """
    with _existing_manager(out_dir) as mngr:
        step = resolve_step(mngr, out_dir, step)
        cfg = _read_config(mngr, step, out_dir)
        if expected_config is not None:
            check_config(cfg, expected_config, out_dir)
        target = params_target if params_target is not None else param_shapes(cfg)
        items = dict(params=ocp.args.StandardRestore(abstract_tree(target)),
                     meta=ocp.args.JsonRestore())
        if opt_state_target is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_tree(opt_state_target))
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot restore step {step} from {out_dir}: it does not fit "
                                  f"the model its config describes ({first[:300]})") from e
    out = {"step": step, "config": cfg, "params": restored.params, "meta": restored.meta}
    if opt_state_target is not None:
        out["opt_state"] = restored.opt_state
    return out


def latest_step(out_dir: str) -> Optional[int]:
    if not os.path.isdir(checkpoint_dir(out_dir)):
        return None
    with manager(out_dir, max_to_keep=None, create=False) as mngr:
        return mngr.latest_step()


def load_checkpoint(out_dir: str, step: Optional[int] = None, *,
                    expected_config: Optional[GPTConfig] = None) -> tuple[dict, GPTConfig]:
    """(params, cfg) of the latest (or the given) step of a train.py out_dir."""
    r = restore(out_dir, step, expected_config=expected_config)
    return r["params"], r["config"]
