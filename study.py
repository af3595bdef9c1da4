"""`python study.py ...`: the same as `gpt-jax-study` (gpt_jax/cli/study.py)."""
from gpt_jax.cli.study import entry

if __name__ == "__main__":
    entry()
