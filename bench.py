"""`python bench.py ...`: the same as `gpt-jax-bench` (gpt_jax/cli/bench.py)."""
from gpt_jax.cli.bench import entry

if __name__ == "__main__":
    entry()
