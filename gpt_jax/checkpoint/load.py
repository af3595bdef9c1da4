"""load_model(source): a model from wherever it lives, as `from_pretrained` is to transformers
users: a train.py out_dir (its latest checkpoint, or `step`), a local Hugging Face directory, or
a gpt2* hub name when online."""
from __future__ import annotations

import os
from typing import Optional

from gpt_jax.checkpoint.hf import from_hf
from gpt_jax.checkpoint.manager import checkpoint_dir, restore
from gpt_jax.errors import UserError
from gpt_jax.model.config import GPTConfig


def is_run_dir(source: str) -> bool:
    """Whether source is a train.py out_dir: it has checkpoints/, or it is `out` (train.py's
    default, so that a missing one says "train first" instead of looking on the hub)."""
    return source == "out" or os.path.isdir(checkpoint_dir(source))


def load_model(source: str = "out", step: Optional[int] = None, *, dtype: Optional[str] = None,
               step_hint: str = "load the latest with step={step}",
               step_flag: str = "step=") -> tuple[dict, GPTConfig]:
    """(params, cfg) from a train.py out_dir, a Hugging Face directory or a hub name.

    Args:
      source: a train.py out_dir (holds checkpoints/; "out" always means one), a local
        Hugging Face GPT-2 directory (config.json + model.safetensors or pytorch_model.bin),
        or a hub id such as "gpt2" / "gpt2-medium" (downloaded; needs the network).
      step: a train.py checkpoint step (default: the latest); only for an out_dir.
      dtype: for a Hugging Face source, the compute dtype to set on its config
        ("float32" | "bfloat16"; default: float32).
      step_hint: how a caller picks an intact step when the chosen one is damaged
        ("{step}" is filled in; see checkpoint.manager.restore).
      step_flag: the name of the step argument in the caller's words ("--step " for a CLI).

    Returns:
      (params, cfg): params a pytree of arrays in GPT-2's layout, cfg its GPTConfig.

    Raises:
      CheckpointError: no checkpoint, a damaged one, or unreadable Hugging Face files.
      UserError: `step` given for a source that is not a train.py out_dir, or a hub id while
        offline (one line that says what to do).
    """
    if is_run_dir(source):
        r = restore(source, step, step_hint=step_hint)
        return r["params"], r["config"]
    check_step_source(source, step, step_flag)
    return from_hf(source, dtype)


def check_step_source(source: str, step: Optional[int], step_flag: str = "step=") -> None:
    """A one-line UserError where `step` is given for a Hugging Face source, which has no
    steps, in the caller's words: step_flag is its step argument ("--step " for a CLI,
    "step=" for the library and lm-eval's model_args). A source that is no model at all gets
    from_hf's error, which says what to pass instead."""
    if step is None or is_run_dir(source):
        return
    if os.path.isfile(os.path.join(source, "config.json")):
        what = "a Hugging Face directory"
    elif not os.path.exists(source) and os.sep not in source and not source.startswith("."):
        what = "a Hugging Face hub name"
    else:
        from_hf(source)   # no such directory, or not a model: that error first
        what = "a Hugging Face directory"
    given = f"{step_flag}{step}"
    raise UserError(f"{given} applies to a train.py out_dir (it picks one of its checkpoints), "
                    f"and {source} is {what}, which loads without it: drop {given}")
