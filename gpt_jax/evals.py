"""`import gpt_jax.evals` registers the lm-evaluation-harness model "gpt_jax" (kept at this path
for lm-eval's `--include_path`-free use; the model lives in gpt_jax/evaluation/harness.py)."""
from gpt_jax.evaluation.harness import GptJaxLM, results_table, run_harness

__all__ = ["GptJaxLM", "results_table", "run_harness"]
