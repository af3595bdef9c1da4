"""`python eval.py ...`: the same as `gpt-jax-eval` (gpt_jax/cli/eval.py)."""
from gpt_jax.cli.eval import entry

if __name__ == "__main__":
    entry()
