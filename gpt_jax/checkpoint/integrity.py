"""What the disk may hold, checked on both sides of a checkpoint: before a save, a valid step,
params that fit their config and no NaN or inf; at restore, a step that is damaged (unreadable
files, or NaN/inf values) is told apart from a mismatch and named in one line.
"""
from __future__ import annotations

import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model.config import GPTConfig
from gpt_jax.errors import CheckpointError, ConfigError
from gpt_jax.model.gpt import param_shapes


class NonFiniteError(CheckpointError):
    """Parameters (or optimizer state) hold NaN or inf: refused at save, damaged at restore."""


class Damaged(Exception):
    """A step whose files cannot be read, or whose values are NaN/inf (message: why)."""


def path_name(path) -> str:
    """'h_0/attn/c_attn/kernel' for a tree path (dict keys, sequence indices and namedtuple
    fields alike, so a tree and orbax's metadata of it give the same names)."""
    def part(k):
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)
    return "/".join(part(k) for k in path)


def leaf_shapes(tree) -> dict[str, tuple]:
    """{"h_0/attn/c_attn/kernel": shape, ...} of a tree of arrays, ShapeDtypeStructs or orbax
    metadata alike."""
    return {path_name(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


@jax.jit
def _finite_flags(leaves):
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


def first_non_finite(tree) -> Optional[str]:
    """The name of the first floating-point leaf of tree holding NaN or inf, or None (one
    jitted call reduces every leaf where it lives: no copy to the host)."""
    named = [(path_name(p), x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not named:
        return None
    flags = _finite_flags([x for _, x in named])
    # replicated over the devices of every process: each reads its own copy
    flags = np.asarray(flags.addressable_data(0)) if hasattr(flags, "addressable_data") \
        else np.asarray(flags)
    bad = [name for (name, _), ok in zip(named, flags) if not ok]
    return bad[0] if bad else None


def params_mismatch(params, cfg: GPTConfig) -> Optional[str]:
    """Why params do not have the GPT-2-layout shapes cfg describes (None when they do)."""
    try:
        got = leaf_shapes(params)
    except Exception:  # noqa: BLE001 - not a pytree of arrays
        return f"params is a {type(params).__name__}, not a dict of arrays"
    want = leaf_shapes(param_shapes(cfg))
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        listing = lambda kind, names: \
            f"{kind} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        parts = [listing(k, n) for k, n in (("missing", missing), ("unexpected", extra)) if n]
        return "; ".join(parts) + " (params must be in the unstacked GPT-2 layout)"
    for name in want:
        if got[name] != want[name]:
            return f"{name} has shape {got[name]}, the config gives {want[name]}"
    return None


def describe_steps(steps) -> str:
    steps = sorted(steps)
    if not steps:
        return "no checkpoint is on disk"
    return (f"the latest checkpoint on disk is step {steps[-1]}"
            + (f" (steps {', '.join(map(str, steps))})" if len(steps) > 1 else ""))


def check_step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise CheckpointError(f"a checkpoint step must be a non-negative integer, got {step!r}")
    return int(step)


def check_savable(step, params, cfg: GPTConfig, opt_state=None) -> int:
    """The step as an int, or an error for what must never reach the disk: a negative step
    ("no finished checkpoint" later), params that do not fit cfg (a checkpoint that could
    never be loaded) and NaN/inf values (NonFiniteError)."""
    step = check_step(step)
    if not isinstance(cfg, GPTConfig):
        raise ConfigError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
    why = params_mismatch(params, cfg)
    if why:
        raise CheckpointError(f"params do not fit the config ({why}); nothing saved: such a "
                              f"checkpoint could never be loaded")
    bad, what = first_non_finite(params), "params"
    if bad is None and opt_state is not None:
        bad, what = first_non_finite(opt_state), "optimizer state"
    if bad is not None:
        raise NonFiniteError(f"the {what} hold NaN or inf (first in {bad}); step {step} was "
                             f"not saved")
    return step


def clip(text: str, limit: int = 160) -> str:
    """text cut at a word boundary (never mid-word), with an ellipsis when cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def storage_reason(e: BaseException) -> str:
    """One line on why orbax could not read a file: its own message (a missing item or
    file, a JSON error), without TensorStore's spec dump or status-code prefix."""
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or type(e).__name__}"
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = text.split(" [tensorstore_spec=")[0].split("See full TensorStore")[0]
    text = re.sub(r"^[A-Z_]+: ", "", text.strip().splitlines()[0] if text.strip() else "")
    if isinstance(e, ValueError) and type(e).__name__ == "JSONDecodeError":
        text = f"not valid JSON ({text})"
    return clip(text).rstrip(".") or type(e).__name__


def unreadable_reason(e: BaseException) -> str:
    """Why a restore failed, without TensorStore's spec dump: the tensor it could not read
    and TensorStore's reason (e.g. a byte range beyond a truncated file's end)."""
    cause = e.__cause__ or e.__context__
    text = f"{e} {cause or ''}"
    m = re.search(r'Error reading "([^"/]+)', text) or re.search(r"'path': '([^'/]+)/?'", text)
    if not m:
        return storage_reason(e)
    detail = str(cause).rsplit(": ", 1)[-1] if cause is not None and ": " in str(cause) else ""
    return f"{m.group(1)} cannot be read" + (f" ({clip(detail, 120)})" if detail else "")
