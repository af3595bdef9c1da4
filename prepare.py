"""`python prepare.py ...`: the same as `gpt-jax-prepare` (gpt_jax/cli/prepare.py)."""
from gpt_jax.cli.prepare import entry

if __name__ == "__main__":
    entry()
