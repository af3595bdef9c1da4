"""`python -m gpt_jax.hf export OUT_DIR HF_DIR` (the command's home is gpt_jax/cli/hf.py; the
import/export functions are gpt_jax.from_hf / gpt_jax.to_hf, in gpt_jax/checkpoint/hf.py)."""
from gpt_jax.cli.hf import entry, main

__all__ = ["entry", "main"]

if __name__ == "__main__":
    entry()
