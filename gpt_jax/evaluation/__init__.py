"""Evaluation: log-likelihood scoring as lm-eval scores, HellaSwag / LAMBADA / perplexity,
tasks run during training, and the lm-evaluation-harness model (harness.py, which needs the
`eval` extra and is imported on its own: `import gpt_jax.evals`).

    rows.py        scoring requests as rows: checked ids, (context, continuation), windows
    scoring.py     log_probs, loglikelihood, token_logprobs; the scoring memory estimate
    tasks.py       HellaSwag, LAMBADA, text perplexity: files, requests, metrics, evaluate()
    task_evals.py  --eval_tasks: the spec and the tasks a training run evaluates
    harness.py     the lm-eval model "gpt_jax", run_harness()
"""
from gpt_jax.evaluation.scoring import log_probs, loglikelihood, token_logprobs
from gpt_jax.evaluation.tasks import TASKS, evaluate, run_task

__all__ = ["TASKS", "evaluate", "log_probs", "loglikelihood", "run_task", "token_logprobs"]
