"""Section "eval": zero-shot scoring speed, gpt_jax.loglikelihood against lm-eval's own
Hugging Face backend (HFLM: transformers + PyTorch) on the same requests, weights and batch
size, interleaved. `throughput` is the gpu suite's step "loglikelihood": ours alone, over
request lists large enough to fill an accelerator."""
from __future__ import annotations

import time

import jax
import numpy as np

from gpt_jax.lab.bench.harness import Context, Result, ratio_row, result_from_timing
from gpt_jax.lab.bench.peers import have_peers, lm_eval_hf
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import init_params
from gpt_jax.evaluation.scoring import get_scorer, loglikelihood
from gpt_jax.utils.timing import time_call, time_calls

# Request shapes, in tokens: (examples, context range, continuations per example, their
# length range). HellaSwag: 4 endings of ~20 tokens after a ~40-token context. LAMBADA: the
# last word (1-3 tokens) after a ~80-token passage.
SHAPES = {
    "hellaswag": (8, (30, 50), 4, (15, 25)),
    "lambada": (32, (60, 100), 1, (1, 3)),
}
TINY_SHAPES = {
    "hellaswag": (2, (6, 10), 4, (3, 6)),
    "lambada": (8, (8, 16), 1, (1, 3)),
}
# The gpu suite's workloads: one length each, so each compiles one program per batch.
THROUGHPUT_SHAPES = {
    "hellaswag-like": (128, (64, 64), 4, (24, 24)),
    "lambada-like": (512, (96, 96), 1, (2, 2)),
}
TINY_THROUGHPUT_SHAPES = {
    "hellaswag-like": (8, (24, 24), 4, (6, 6)),
    "lambada-like": (16, (32, 32), 1, (2, 2)),
}


def make_requests(shape: tuple, vocab: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Random (context ids, continuation ids) requests of one SHAPES entry."""
    examples, (c_lo, c_hi), k, (e_lo, e_hi) = shape
    rng = np.random.default_rng(seed)
    ids = lambda lo, hi: rng.integers(0, vocab, int(rng.integers(lo, hi + 1))).tolist()
    requests = []
    for _ in range(examples):
        context = ids(c_lo, c_hi)
        requests += [(context, ids(e_lo, e_hi)) for _ in range(k)]
    return requests


def run(ctx: Context) -> list[Result]:
    """Requests/s and scored (continuation) tokens/s of gpt_jax.loglikelihood and of lm-eval's
    HF backend (HFLM._loglikelihood_tokens, the call its loglikelihood makes after encoding)
    on hellaswag- and lambada-shaped requests at one batch size, interleaved; our compile
    time (every program the requests need) in compile_s; ratio rows ours / theirs."""
    name, cfg = ctx.model()
    B = 4 if ctx.tiny else 8
    params = init_params(cfg, jax.random.key(0))
    hf = lm_eval_hf(params, cfg, B, "eval") if have_peers(ctx, "eval") else None
    rows: list[Result] = []
    for i, (shape, spec) in enumerate((TINY_SHAPES if ctx.tiny else SHAPES).items()):
        requests = make_requests(spec, cfg.n_real_vocab, seed=i)
        rows += time_shape(ctx, name, cfg, params, hf, shape, requests, B)
    return rows


def time_shape(ctx: Context, name: str, cfg: GPTConfig, params, hf, shape: str,
               requests: list, B: int) -> list[Result]:
    scored = sum(len(c) for _, c in requests)
    conf = {"preset": name, "shape": shape, "batch": B, "requests": len(requests),
            "scored_tokens": scored, "dtype": cfg.dtype,
            "input_tokens": sum(min(len(a) + len(c) - 1, cfg.block_size) for a, c in requests)}

    def ours():
        return loglikelihood(params, cfg, requests, batch_size=B)

    # The first call compiles every (rows, length bucket, scored bucket) program these
    # requests need; the Scorer sums the time of the calls that traced.
    scorer = get_scorer(cfg)
    before, traces = scorer.compile_seconds, scorer.traces
    answers = ours()
    compile_s = scorer.compile_seconds - before
    conf["programs"] = scorer.traces - traces
    fns = {"ours": ours}
    if hf is not None:
        import torch
        # lm-eval's loglikelihood encodes the strings, then calls this with the token ids.
        hf_requests = [(("", ""), list(a), list(c)) for a, c in requests]
        fns["hf"] = lambda: hf._loglikelihood_tokens(hf_requests, disable_tqdm=True)
        theirs = fns["hf"]()
        conf_hf = {**conf, "torch_threads": torch.get_num_threads(),
                   "max_abs_logp_diff_vs_ours": max(abs(x[0] - y[0])
                                                    for x, y in zip(answers, theirs)),
                   "greedy_equal_ours": float(np.mean([x[1] == y[1]
                                                       for x, y in zip(answers, theirs)]))}
    t = time_calls(fns, ctx.repeats, ctx.warmup)
    rows = []
    res = {}
    for impl, label in (("ours", "gpt_jax loglikelihood"), ("hf", "lm-eval HF backend")):
        if impl not in t:
            continue
        c = conf if impl == "ours" else conf_hf
        cs = compile_s if impl == "ours" else None
        res[impl] = result_from_timing("eval", f"{shape} {label} b{B}", t[impl],
                                       work=len(requests), metric="requests/s",
                                       unit="requests/s", config=c, compile_s=cs)
        rows += [res[impl], result_from_timing("eval", f"{shape} {label} b{B}", t[impl],
                                               work=scored, metric="scored tokens/s",
                                               unit="tokens/s", config=c, compile_s=cs)]
    if "hf" in res:
        rows.append(ratio_row("eval", f"{shape} gpt_jax / lm-eval HF b{B}", res["ours"],
                              res["hf"], conf))
    return rows


def throughput(ctx: Context) -> list[Result]:
    """Requests/s and scored (continuation) tokens/s of loglikelihood() over whole request
    lists at its default batching, host work (checks, batching, sorting) included: what an
    evaluation sees. The first call compiles (compile_s); the timed calls reuse its programs.
    Rows in section "loglikelihood" (the gpu suite's step)."""
    name, cfg = ctx.model()
    params = init_params(cfg, jax.random.key(0))
    scorer = get_scorer(cfg)
    rows = []
    shapes = TINY_THROUGHPUT_SHAPES if ctx.tiny else THROUGHPUT_SHAPES
    for label, spec in shapes.items():
        reqs = make_requests(spec, cfg.n_real_vocab, seed=0)
        before = scorer.compile_seconds
        t0 = time.perf_counter()
        loglikelihood(params, cfg, reqs)                  # compiles; results read back
        first_s = time.perf_counter() - t0
        compile_s = scorer.compile_seconds - before
        # loglikelihood returns Python floats: every call has waited for its device work.
        t = time_call(lambda: loglikelihood(params, cfg, reqs), ctx.repeats, warmup=0)
        conf = {"preset": name, "dtype": cfg.dtype, "requests": len(reqs),
                "context_tokens": spec[1][0], "continuation_tokens": spec[3][0],
                "first_call_s": first_s}
        scored = sum(len(c) for _, c in reqs)
        for work, metric, unit in ((len(reqs), "requests/s", "requests/s"),
                                   (scored, "scored tokens/s", "tokens/s")):
            rows.append(result_from_timing("loglikelihood", f"{name} {label}", t, work=work,
                                           metric=metric, unit=unit, config=conf,
                                           compile_s=compile_s))
    return rows
