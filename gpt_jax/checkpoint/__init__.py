"""Weights on disk: orbax checkpoints of a train.py run (saved whole or not at all, damaged
steps named at restore), the one-run-per-out_dir lock, Hugging Face GPT-2 import/export, and
load_model, which loads any of them.

    manager.py    orbax CheckpointManager wrapper: save / restore / latest
    integrity.py  what may reach the disk; naming a damaged step
    quiet_io.py   orbax failing in one line
    run_lock.py   out_dir/run.lock
    hf_files.py   where HF weights come from (a directory or the hub), read lazily
    hf.py         from_hf / to_hf (safetensors)
    load.py       load_model(source, step=None)
"""
from gpt_jax.checkpoint.hf import from_hf, to_hf
from gpt_jax.checkpoint.load import load_model
from gpt_jax.checkpoint.manager import (all_steps, latest_step, load_checkpoint, restore,
                                        save_checkpoint)
from gpt_jax.checkpoint.run_lock import RunLock

__all__ = ["RunLock", "all_steps", "from_hf", "latest_step", "load_checkpoint", "load_model",
           "restore", "save_checkpoint", "to_hf"]
