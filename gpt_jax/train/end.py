"""How a training run ends: the errors and messages that say what the disk holds and what to
run next (advice that works when followed), and closing the checkpoint manager and the signal
handlers (gpt_jax/train/trainer.py's loop)."""
from __future__ import annotations

import os
import signal

import gpt_jax.checkpoint.manager as ckpt
from gpt_jax.errors import UserError
from gpt_jax.checkpoint.integrity import describe_steps
from gpt_jax.utils.paths import DISK_FULL, write_problem


class TrainingDiverged(UserError):
    """The loss or the gradient norm became NaN or infinite."""


def diverged(out_dir: str, dtype: str, what: str, step: int) -> TrainingDiverged:
    """The error for a NaN/inf at `step`, saying what the disk holds now."""
    steps = ckpt.all_steps(out_dir)
    lower = "Lower --learning_rate" + (" (or use --dtype float32)" if dtype != "float32" else "")
    if step == 0:
        advice = ("The initial weights already give it, so the learning rate is not the "
                  "cause: check the data (token ids within the vocabulary) and the weights")
    elif steps:
        advice = f"{lower}, then continue with --init_from resume"
    else:
        advice = f"{lower} and start again"
    return TrainingDiverged(f"{what} at step {step}: training stopped and step {step} was "
                            f"not saved; {describe_steps(steps)} in "
                            f"{ckpt.checkpoint_dir(out_dir)}. {advice}")


def rerun_advice(out_dir: str) -> str:
    """After a failed write (a full disk): what to run once the disk is fixed, which works as
    said: resume when a checkpoint is on disk, else the same command again."""
    if ckpt.all_steps(out_dir):
        return (f"Free space on that disk (or move {out_dir} to a larger one), then "
                f"continue with --init_from resume")
    return ("Free space on that disk (or pass an --out_dir on a larger one), then run the "
            "same command again")


def write_failed(e: OSError, what: str, out_dir: str) -> str:
    """The one line for a failed write of `what` (metrics.jsonl, loss.png, a tracker's
    files) in out_dir: what went wrong, and what to do by its kind: only a full disk or quota
    gets the disk advice; then what to run once it is fixed."""
    path = e.filename or os.path.join(out_dir, what)
    head = f"could not write {what} ({path}): {e.strerror or e}"
    if e.errno in DISK_FULL:
        return f"{head}. {rerun_advice(out_dir)}"
    then = ("continue with --init_from resume" if ckpt.all_steps(out_dir)
            else "run the same command again")
    fix = write_problem(e, path)
    return f"{head}. {fix[0].upper()}{fix[1:]}, then {then}"


def stop_text(signum: int, out_dir: str, step: int, *, saved: bool, just_saved: bool) -> str:
    """After a signal at `step`: what is on disk, exactly (just_saved: this stop saved it)."""
    name = signal.Signals(signum).name
    where = ckpt.checkpoint_dir(out_dir)
    if just_saved:
        return f"{name}: saved step {step} in {where}; continue with --init_from resume"
    if saved:
        return (f"{name}: stopped at step {step}, which is saved in {where}; continue with "
                f"--init_from resume")
    return f"{name}: stopped at step {step}, before the first update: nothing was saved"


def shut(bar, mngr, handlers, *, quiet: bool) -> None:
    """Close the progress bar and the checkpoint manager (waiting for its saves), and put the
    signal handlers back; quiet: after an error, swallow a second one from orbax."""
    bar.close()
    try:
        mngr.wait_until_finished()
        mngr.close()
    except Exception:  # noqa: BLE001 - after a failed save orbax may fail again here
        if not quiet:
            raise
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
