"""`python train.py ...`: the same as `gpt-jax-train` (gpt_jax/cli/train.py)."""
from gpt_jax.cli.train import entry

if __name__ == "__main__":
    entry()
