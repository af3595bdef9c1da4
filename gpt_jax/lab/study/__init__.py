"""`python study.py`: the chapter's claims measured on the built-in corpus, written as figures
and a markdown report (docs/study/ by default).

One module per topic, in the chapter's order: mlm (GPT vs BERT: the causal LM against BERT's
masked LM), probe and norm (Pre-LN vs Post-LN: gradients at init, then training), tying (tied vs
untied head), strategies (generation strategies on the default train.py model), kv (the KV
cache's marginal cost per step). vocab.py is the small vocabulary the trained topics use, fit.py
and runs.py train, runner.py runs the topics and writes the report.
"""
from gpt_jax.lab.study.runner import TOPICS, VOCAB, Progress, machine, run_study

__all__ = ["TOPICS", "VOCAB", "Progress", "machine", "run_study"]
