"""Evaluation: scoring, HellaSwag / LAMBADA / perplexity tasks, the lm-evaluation-harness model."""
