"""`python sample.py ...`: the same as `gpt-jax-sample` (gpt_jax/cli/sample.py)."""
from gpt_jax.cli.sample import entry

if __name__ == "__main__":
    entry()
