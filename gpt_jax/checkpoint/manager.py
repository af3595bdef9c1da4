"""Checkpoints: an orbax CheckpointManager directory `out_dir/checkpoints/`.

Each step is a Composite of `params` (StandardSave), `opt_state` (StandardSave, training only),
`meta` (JsonSave: step, rng key data, sampler state) and `config` (JsonSave: GPTConfig fields).
Parameters are always stored in the unstacked GPT-2 layout (h_0, h_1, ...).

What the disk can be trusted to hold:
- save refuses what could never be loaded (params that do not fit their config, a negative or
  existing step) and what is not worth loading (NaN or inf values), before writing anything;
- orbax writes each step to a temporary directory and renames it when complete, so a crash
  mid-save never leaves a step that looks finished; a save that fails (a full disk) removes its
  partial directory and says so in one line, and the older steps stay; a manager opened for
  writing removes partial directories that a killed process left;
- restore names a damaged step (unreadable files, or NaN/inf values) as damaged, together with
  the steps that do restore, instead of passing on storage-library internals or NaN weights.
The checks themselves are in gpt_jax/checkpoint/integrity.py.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import threading
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from gpt_jax.checkpoint.integrity import (Damaged, check_savable, check_step, describe_steps,
                                          first_non_finite, leaf_shapes, storage_reason,
                                          unreadable_reason)
from gpt_jax.checkpoint.quiet_io import (collect_quietly, draining_loops, errors_held,
                                         join_new_threads)
from gpt_jax.checkpoint.run_lock import RunLock
from gpt_jax.errors import CheckpointError, ConfigError
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import param_shapes
from gpt_jax.utils.paths import writable_dir

CHECKPOINT_DIR = "checkpoints"
TMP_SUFFIX = ".orbax-checkpoint-tmp"   # orbax's name for a step being written


def checkpoint_dir(out_dir: str) -> str:
    return os.path.join(os.path.abspath(out_dir), CHECKPOINT_DIR)


def manager(out_dir: str, *, max_to_keep: Optional[int] = 3, create: bool = True,
            async_save: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager over out_dir/checkpoints (async saves are opt-in: the caller must
    then call wait_until_finished() before it exits). create=False is for reading (orbax's
    read_only option logs a warning each time); a writing manager first removes the partial
    step directories a killed save left behind."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                           enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=create)
    return ocp.CheckpointManager(checkpoint_dir(out_dir), options=options)


# -- save ------------------------------------------------------------------------------------

def remove_partial(out_dir_or_path: str, step: int) -> list[str]:
    """Remove what an unfinished save of `step` left (process 0; paths removed)."""
    root = out_dir_or_path if os.path.basename(out_dir_or_path) == CHECKPOINT_DIR else \
        checkpoint_dir(out_dir_or_path)
    paths = glob.glob(os.path.join(root, f"{int(step)}{TMP_SUFFIX}*"))
    if jax.process_index() == 0:
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)
    return paths


def _oserror_text(e: BaseException) -> str:
    """Why a save failed, in a few words: an OSError's strerror (a full disk, a read-only
    mount, permissions), found in TensorStore's long text too, else its first line clipped at
    a word boundary."""
    first = e
    while e is not None:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        m = re.search(r"(No space left on device|Disk quota exceeded|Read-only file system|"
                      r"Permission denied|Input/output error)", str(e))
        if m:
            return m.group(1)
        e = e.__cause__ or e.__context__
    return storage_reason(first)


class SaveFailed(CheckpointError):
    """Writing a checkpoint failed (a full disk...): the partial step was removed."""


def save(mngr: ocp.CheckpointManager, step: int, params, cfg: GPTConfig, *,
         opt_state=None, meta: Optional[dict] = None, force: bool = True,
         checked: bool = False) -> None:
    """Save one step and wait for it. meta must be JSON-serialisable (store RNG keys as
    key_data lists). Refuses, writing nothing, what check_savable refuses (unless `checked`:
    the caller just did) and an existing step; when writing fails (a full disk) the partial
    step is removed, the older steps stay, and a one-line CheckpointError says so."""
    if not checked:
        step = check_savable(step, params, cfg, opt_state)
    where = str(mngr.directory)
    if step in mngr.all_steps():
        raise CheckpointError(f"{where} already holds step {step}: pass another step, or "
                              f"delete that step's directory first")
    items = dict(params=ocp.args.StandardSave(params),
                 meta=ocp.args.JsonSave({"step": step, **(meta or {})}),
                 config=ocp.args.JsonSave(cfg.to_dict()))
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
    before = set(threading.enumerate())
    try:
        with errors_held(), draining_loops():
            mngr.save(step, args=ocp.args.Composite(**items), force=force)
            mngr.wait_until_finished()
    except Exception as e:  # a full disk, a lost mount, permissions: orbax's threads fail
        join_new_threads(before)
        remove_partial(where, step)
        kept = [s for s in _listed_steps(where) if s != step]
        raise SaveFailed(f"could not save step {step} in {where}: {_oserror_text(e)}; the "
                         f"partial step was removed" + (f" and older checkpoints are kept "
                                                        f"({describe_steps(kept)})" if kept
                                                        else " (no checkpoint is on disk)")
                         ) from None


def _listed_steps(root: str) -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir(root) if n.isdigit())
    except OSError:
        return []


def save_checkpoint(out_dir: str, step: int, params, cfg: GPTConfig, *,
                    max_to_keep: Optional[int] = 3) -> None:
    """Write a params-only checkpoint that sample.py, eval.py and load_checkpoint can read.

    Args:
      out_dir: the run directory; the checkpoint goes to out_dir/checkpoints/<step>.
      step: a new, non-negative step number.
      params: the model's params (GPT-2 layout, as init_params returns them).
      cfg: their GPTConfig, stored beside them.
      max_to_keep: how many steps out_dir keeps (older ones are deleted; None keeps all).

    Raises:
      CheckpointError: a negative or existing step, params that do not fit cfg, NaN/inf
        values, or an out_dir that cannot be written (nothing is written then).
      UserError: another run holds out_dir (its run lock).
    """
    step = check_savable(step, params, cfg)   # before out_dir is created
    writable_dir(out_dir, "out_dir")
    with RunLock(out_dir), manager(out_dir, max_to_keep=max_to_keep) as mngr:  # not mid-run
        save(mngr, step, params, cfg, checked=True)


def delete_steps_after(mngr: ocp.CheckpointManager, step: int) -> list[int]:
    """Delete the steps after `step` (a run resumed from an earlier step rewrites them)."""
    later = [s for s in mngr.all_steps() if s > step]
    for s in sorted(later, reverse=True):
        mngr.delete(s)
    return later


# -- restore ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _existing_manager(out_dir: str):
    """A reading manager over out_dir/checkpoints; orbax calls inside finish their abandoned
    reads before returning (gpt_jax/checkpoint/quiet_io.py), so a damaged step fails in one line."""
    path = checkpoint_dir(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CheckpointError(f"{out_dir} is a file, not a train.py out_dir: pass the directory "
                              f"train.py wrote (it holds checkpoints/)")
    if not os.path.isdir(out_dir):
        raise CheckpointError(f"checkpoint directory {out_dir} does not exist: train a model "
                              f"first (python train.py --out_dir {out_dir}) or pass another one")
    if not os.path.isdir(path):
        raise CheckpointError(f"{out_dir} holds no checkpoints/ directory: it is not a "
                              f"train.py out_dir (train first, or pass the right --out_dir)")
    with draining_loops(), manager(out_dir, max_to_keep=None, create=False) as mngr:
        yield mngr


def resolve_step(mngr: ocp.CheckpointManager, out_dir: str, step: Optional[int]) -> int:
    steps = mngr.all_steps()
    if not steps:
        raise CheckpointError(f"no finished checkpoint in {checkpoint_dir(out_dir)}: "
                              f"train (or resume) until one is saved")
    if step is None:
        return max(steps)
    step = check_step(step)
    if step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {out_dir}; "
                              f"available: {sorted(steps)}")
    return step


def _json_item(mngr, step: int, item: str):
    """The JSON item (config, meta) of a step; Damaged saying what is missing or unreadable."""
    where = os.path.join(str(mngr.directory), str(step), item)
    if not os.path.isdir(where):
        raise Damaged(f"its {item} directory {where} is missing")
    try:
        return mngr.restore(step, args=ocp.args.Composite(
            **{item: ocp.args.JsonRestore()}))[item]
    except Exception as e:  # noqa: BLE001 - a missing or unreadable JSON file
        raise Damaged(f"its {item} cannot be read: {storage_reason(e)}") from None


def _read_config(mngr, step: int, out_dir: str) -> GPTConfig:
    raw = _json_item(mngr, step, "config")
    try:
        if not isinstance(raw, dict):
            raise ConfigError(f"it is a {type(raw).__name__}, not an object")
        return GPTConfig.from_dict(raw)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"checkpoint step {step} in {out_dir} has an invalid config: {e}")


def read_header(out_dir: str, step: Optional[int] = None, *,
                step_hint: str = "load one of them by its step") -> tuple[int, GPTConfig, dict]:
    """(step, GPTConfig, meta) of the latest (or given) step, without reading any weights."""
    with _existing_manager(out_dir) as mngr:
        step = resolve_step(mngr, out_dir, step)
        try:
            cfg = _read_config(mngr, step, out_dir)
            meta = _json_item(mngr, step, "meta")
            return step, cfg, (meta if isinstance(meta, dict) else {})
        except Damaged as e:
            damage, others = str(e), [s for s in mngr.all_steps() if s != step]
    raise _damaged_error(out_dir, step, damage, others, step_hint=step_hint)


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


def _stored_shapes(mngr, step: int, item: str) -> dict:
    from etils import epath  # orbax's own path type (a dependency of orbax)
    path = epath.Path(os.path.join(str(mngr.directory), str(step), item))
    md = ocp.StandardCheckpointHandler().metadata(path)
    return leaf_shapes(getattr(md, "tree", md))


def _restore_step(mngr, step: int, out_dir: str, cfg: GPTConfig, params_target,
                  opt_state_target):
    """The restored Composite of one step; CheckpointError when the stored tensors do not
    fit cfg (a mismatch, not damage); Damaged when files are unreadable or values NaN/inf."""
    items = dict(params=(params_target if params_target is not None else param_shapes(cfg)))
    if opt_state_target is not None:
        items["opt_state"] = opt_state_target
    for item, target in items.items():
        if not os.path.isdir(os.path.join(str(mngr.directory), str(step), item)):
            if item == "opt_state":
                raise CheckpointError(
                    f"step {step} in {out_dir} holds no optimizer state (a params-only "
                    f"checkpoint, as save_checkpoint writes): it cannot be resumed; fine-tune "
                    f"from it instead (train.py --init_from {out_dir} --out_dir NEW_DIR)")
            raise Damaged(f"its {item} directory is missing")
        try:
            stored = _stored_shapes(mngr, step, item)
        except Exception as e:  # noqa: BLE001 - missing or unreadable metadata
            raise Damaged(f"its {item} metadata cannot be read: {storage_reason(e)}") from None
        wanted = leaf_shapes(target)
        if stored != wanted:
            diff = sorted(set(stored) ^ set(wanted)) or \
                [n for n in wanted if stored[n] != wanted[n]]
            whose = ("the model its config describes" if item == "params" else
                     "this run's optimizer (was --grad_clip switched on or off?)")
            raise CheckpointError(f"cannot restore step {step} from {out_dir}: its {item} do "
                                  f"not fit {whose} (first difference: {diff[0]})")
    args = {k: ocp.args.StandardRestore(abstract_tree(v)) for k, v in items.items()}
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore(),
                                                              **args))
        why = None
    except Exception as e:  # noqa: BLE001 - truncated or overwritten files
        why = unreadable_reason(e)
    if why is not None:
        collect_quietly()
        raise Damaged(why)
    for k in items:
        bad = first_non_finite(restored[k])
        if bad is not None:
            raise Damaged(f"its {k} hold NaN or inf values (first in {bad})")
    return restored


def intact_steps(out_dir: str, steps, *, params_target=None, opt_state_target=None) -> list:
    """Those of `steps` that restore completely with finite values (each read in full, one at
    a time: meant for the error path)."""
    good = []
    with _existing_manager(out_dir) as mngr:
        for s in sorted(steps, reverse=True):
            try:
                cfg = _read_config(mngr, s, out_dir)
                _restore_step(mngr, s, out_dir, cfg, params_target, opt_state_target)
                good.append(s)
            except (CheckpointError, Damaged):
                pass
    return sorted(good)


def _damaged_error(out_dir: str, step: int, damage: str, others, *, params_target=None,
                   opt_state_target=None, step_hint: str) -> CheckpointError:
    """"step N is damaged: why; intact steps: ..." (the others each restored to check)."""
    good = intact_steps(out_dir, others, params_target=params_target,
                        opt_state_target=opt_state_target)
    if good:
        # the hint names the latest intact step: advice that can be followed as it is
        tail = (f"intact steps: {', '.join(map(str, good))} "
                f"({step_hint.replace('{step}', str(good[-1]))})")
    else:
        tail = "no other intact step is on disk" + (
            f" (steps {', '.join(map(str, sorted(others)))} are damaged too)" if others else "")
    return CheckpointError(f"checkpoint step {step} in {checkpoint_dir(out_dir)} is damaged: "
                           f"{damage}; {tail}")


def restore(out_dir: str, step: Optional[int] = None, *, params_target=None,
            opt_state_target=None, expected_config: Optional[GPTConfig] = None,
            step_hint: str = "load one of them by its step") -> dict[str, Any]:
    """Restore {"step", "config", "params", "meta"[, "opt_state"]} from out_dir.

    params_target / opt_state_target: pytrees of arrays or ShapeDtypeStructs (with shardings)
    to restore onto; params default to the config's shapes on the first device. A damaged
    step (unreadable, or NaN/inf values) is a CheckpointError that names the intact steps;
    step_hint says how the caller picks one; "{step}" in it becomes the latest intact step
    (e.g. "continue from the latest with --resume_step {step}").
    """
    with _existing_manager(out_dir) as mngr:
        step = resolve_step(mngr, out_dir, step)
        try:
            cfg = _read_config(mngr, step, out_dir)
            if expected_config is not None:
                check_config(cfg, expected_config, out_dir)
            restored = _restore_step(mngr, step, out_dir, cfg, params_target, opt_state_target)
            damage = None
        except Damaged as e:
            damage, others = str(e), [s for s in mngr.all_steps() if s != step]
    if damage is not None:
        raise _damaged_error(out_dir, step, damage, others, params_target=params_target,
                             opt_state_target=opt_state_target, step_hint=step_hint)
    out = {"step": step, "config": cfg, "params": restored.params, "meta": restored.meta}
    if opt_state_target is not None:
        out["opt_state"] = restored.opt_state
    return out


def all_steps(out_dir: str) -> list[int]:
    """The finished steps in out_dir/checkpoints (none when it does not exist)."""
    if not os.path.isdir(checkpoint_dir(out_dir)):
        return []
    with manager(out_dir, max_to_keep=None, create=False) as mngr:
        return sorted(mngr.all_steps())


def latest_step(out_dir: str) -> Optional[int]:
    steps = all_steps(out_dir)
    return steps[-1] if steps else None


def load_checkpoint(out_dir: str, step: Optional[int] = None, *,
                    expected_config: Optional[GPTConfig] = None) -> tuple[dict, GPTConfig]:
    """Load a checkpoint of a train.py out_dir (gpt_jax.load_model also takes HF sources).

    Args:
      out_dir: a train.py out_dir (it holds checkpoints/).
      step: the step to load (default: the latest).
      expected_config: when given, the stored config must equal it.

    Returns:
      (params, cfg): params in GPT-2's layout, cfg the GPTConfig they were saved with.

    Raises:
      CheckpointError: no checkpoint, an unknown step, a damaged step (the message names the
        intact ones), or a config other than expected_config.
    """
    r = restore(out_dir, step, expected_config=expected_config,
                step_hint=f"load the latest with load_checkpoint({out_dir!r}, step={{step}})")
    return r["params"], r["config"]
