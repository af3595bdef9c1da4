"""Scoring throughput: gpt_jax.loglikelihood over synthetic requests shaped like the two
zero-shot tasks, in requests/s and scored tokens/s. The gpu suite runs it (suite.py); it is not
one of bench.py's default sections."""
from __future__ import annotations

import time

import jax
import numpy as np

from gpt_jax.bench.harness import Context, Result, result_from_timing
from gpt_jax.model import init_params
from gpt_jax.scoring import get_scorer, loglikelihood
from gpt_jax.timing import time_call

# (label, contexts, choices per context, context tokens, continuation tokens): HellaSwag's
# val set has 4 endings of ~20 tokens after a ~40-100 token context; LAMBADA scores a 1-3
# token last word after ~80 tokens. One length each, so each workload compiles one program.
WORKLOADS = (("hellaswag-like", 128, 4, 64, 24), ("lambada-like", 512, 1, 96, 2))
TINY_WORKLOADS = (("hellaswag-like", 8, 4, 24, 6), ("lambada-like", 16, 1, 32, 2))


def requests(n_contexts: int, choices: int, ctx_len: int, cont_len: int, vocab: int,
             seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """n_contexts * choices (context, continuation) pairs of random ids; the choices of one
    context share it, as a multiple-choice task's do."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_contexts):
        context = rng.integers(0, vocab, ctx_len).tolist()
        out += [(context, rng.integers(0, vocab, cont_len).tolist()) for _ in range(choices)]
    return out


def run(ctx: Context) -> list[Result]:
    """Requests/s and scored (continuation) tokens/s of loglikelihood() over whole request
    lists, host work (checks, batching, sorting) included: what an evaluation sees. The first
    call compiles (reported as compile_s); the timed calls reuse its programs."""
    name, cfg = ctx.model()
    params = init_params(cfg, jax.random.key(0))
    scorer = get_scorer(cfg)
    rows = []
    for label, n_ctx, choices, ctx_len, cont_len in TINY_WORKLOADS if ctx.tiny else WORKLOADS:
        reqs = requests(n_ctx, choices, ctx_len, cont_len, cfg.n_real_vocab)
        before = scorer.compile_seconds
        t0 = time.perf_counter()
        loglikelihood(params, cfg, reqs)                  # compiles; results read back
        first_s = time.perf_counter() - t0
        compile_s = scorer.compile_seconds - before
        # loglikelihood returns Python floats: every call has waited for its device work.
        t = time_call(lambda: loglikelihood(params, cfg, reqs), ctx.repeats, warmup=0)
        conf = {"preset": name, "dtype": cfg.dtype, "requests": len(reqs),
                "context_tokens": ctx_len, "continuation_tokens": cont_len,
                "first_call_s": first_s}
        rows.append(result_from_timing("loglikelihood", f"{name} {label}", t, work=len(reqs),
                                       metric="requests/s", unit="requests/s", config=conf,
                                       compile_s=compile_s))
        rows.append(result_from_timing("loglikelihood", f"{name} {label}", t,
                                       work=len(reqs) * cont_len, metric="scored tokens/s",
                                       unit="tokens/s", config=conf, compile_s=compile_s))
    return rows
