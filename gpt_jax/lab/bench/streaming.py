"""Rows of section "serve" for streaming and early exit (gpt_jax.generation.streaming, gpt_jax.generation.stopping).

streamed vs unstreamed greedy: generate_stream (the same compiled loop plus one host callback
per token, read by a consumer thread) against compile_generate's program, interleaved; the
target is an overhead of at most 5% (ratio >= 0.95). Early exit: a batch whose rows all stop
(stop strings) after 10 of 512 tokens, against the same batch decoding all 512 and against a
decode of 10 tokens: the while_loop should cost about the 10 steps, not 512 (target: >= 0.95x
the 10-token call). The early exit and the 10-token call are timed interleaved with each other
and apart from the 512-token call, which slows whichever call follows it.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from gpt_jax.lab.bench.harness import Context, Result, ratio_row, result_from_timing
from gpt_jax.generation.decoding import compile_generate
from gpt_jax.generation.loop import DECODER
from gpt_jax.model.gpt import init_params
from gpt_jax.generation.streaming import generate_stream
from gpt_jax.utils.timing import page_faults, time_calls
from gpt_jax.model.tokenizer import get_tokenizer

SECTION = "serve"
PAIR_REPEATS = 15


def run(ctx: Context) -> list[Result]:
    """The streaming and early-exit rows (see the module docstring)."""
    name, cfg = ctx.model()
    params = init_params(cfg, jax.random.key(0))
    DECODER.weights(params, cfg)
    return stream_rows(ctx, name, cfg, params) + early_exit_rows(ctx, name, cfg, params)


def stream_rows(ctx: Context, name: str, cfg, params) -> list[Result]:
    P, N = (8, 16) if ctx.tiny else (32, 128)
    rows: list[Result] = []
    for B in (1, 8):
        prompts = np.random.default_rng(B).integers(0, cfg.n_real_vocab, (B, P))
        t0 = time.perf_counter()
        fn, args = compile_generate(params, cfg, prompts, N, temperature=0)
        compile_s = time.perf_counter() - t0
        ref = np.asarray(fn(*args))

        def streamed():
            return np.stack([p.tokens for p in generate_stream(params, cfg, prompts, N,
                                                               temperature=0)], axis=1)
        t0 = time.perf_counter()
        same = float((streamed() == ref).mean())   # also its compile (the first call)
        stream_compile_s = time.perf_counter() - t0
        t = time_calls({"plain": lambda: fn(*args), "stream": streamed}, ctx.repeats,
                       ctx.warmup)
        conf = {"preset": name, "batch": B, "prompt": P, "new_tokens": N, "dtype": cfg.dtype,
                "greedy": True}
        plain = result_from_timing(SECTION, f"ours greedy unstreamed b{B}", t["plain"],
                                   work=B * N, metric="tokens/s", unit="tokens/s",
                                   config=conf, compile_s=compile_s)
        stream = result_from_timing(SECTION, f"ours greedy streamed b{B}", t["stream"],
                                    work=B * N, metric="tokens/s", unit="tokens/s",
                                    config={**conf, "tokens_equal_unstreamed": same},
                                    compile_s=stream_compile_s)
        rows += [plain, stream, ratio_row(SECTION, f"streamed / unstreamed b{B}", stream, plain,
                                          {**conf, "target": ">= 0.95"})]
    return rows


def early_exit_rows(ctx: Context, name: str, cfg, params) -> list[Result]:
    B, P = 4, 32
    N, K = (64, 10) if ctx.tiny else (512, 10)
    N = min(N, cfg.block_size - P)
    enc = get_tokenizer()
    # Each row's stop: the text of its first K new tokens, which first ends at token K - 1.
    # Rows whose first K tokens are not whole UTF-8 text (a random model emits any bytes)
    # cannot be written as a stop string: prompts are drawn until B rows can.
    prompts, stops, free = [], [], []
    for seed in range(20):
        batch = np.random.default_rng(seed).integers(0, cfg.n_real_vocab, (B, P))
        full, args_full = compile_generate(params, cfg, batch, N, temperature=0)
        for prompt, row in zip(batch, np.asarray(full(*args_full))):
            try:
                stop = enc.decode_bytes(list(map(int, row[:K]))).decode("utf-8")
            except UnicodeDecodeError:
                continue
            prompts, stops, free = prompts + [prompt], stops + [stop], free + [row]
        if len(prompts) >= B:
            break
    prompts, stops, free = np.array(prompts[:B]), stops[:B], np.array(free[:B])
    full, args_full = compile_generate(params, cfg, prompts, N, temperature=0)
    t0 = time.perf_counter()
    early, args_early = compile_generate(params, cfg, prompts, N, temperature=0, stop=stops,
                                         stop_in_prompt=False)
    compile_s = time.perf_counter() - t0
    short, args_short = compile_generate(params, cfg, prompts, K, temperature=0)
    out = np.asarray(early(*args_early))
    ran = [int(np.flatnonzero(out[b] != free[b])[0]) if (out[b] != free[b]).any() else N
           for b in range(B)]       # the padding starts where a row stopped
    # The early exit and the 10-token call are timed as a pair, the 512-token call apart: a
    # call right after a ~15 s one ran 30-50 ms slower (measured on the 2-core workplace
    # machine, 2026-12-07). Calls of ~0.35 s differ by a few percent, about the machine's noise
    # in one call: PAIR_REPEATS pairs (~10 s) hold the median to ~1%.
    t = time_calls({"early": lambda: early(*args_early), "short": lambda: short(*args_short)},
                   ctx.repeats if ctx.tiny else max(ctx.repeats, PAIR_REPEATS), ctx.warmup)
    t |= time_calls({"full": lambda: full(*args_full)}, ctx.repeats, ctx.warmup)
    # What the early exit might pay that the 10-token call does not: XLA's one temporary buffer
    # per call. A one-program early exit held every segment's cache there (362 MB), a fresh
    # allocation from the kernel each call whose first segment was faulted in anew; its start
    # program (loop.Programs) now holds only its own (temp_bytes: the start program's).
    conf = {"preset": name, "batch": B, "prompt": P, "new_tokens": N, "dtype": cfg.dtype,
            "greedy": True, "stop_after": K, "rows_stopped_after": ran,
            "temp_bytes": {"early": early.memory_analysis().temp_size_in_bytes,
                           "short": short.memory_analysis().temp_size_in_bytes},
            "minor_page_faults_per_call": {
                "early": page_faults(lambda: early(*args_early)),
                "short": page_faults(lambda: short(*args_short))}}
    rows = [result_from_timing(SECTION, f"early exit: {B} rows stop after {K} of {N}",
                               t["early"], work=1, metric="calls/s", unit="calls/s",
                               config=conf, compile_s=compile_s),
            result_from_timing(SECTION, f"no stop: {B} rows x {N} tokens", t["full"], work=1,
                               metric="calls/s", unit="calls/s", config=conf),
            result_from_timing(SECTION, f"no stop: {B} rows x {K} tokens", t["short"], work=1,
                               metric="calls/s", unit="calls/s", config=conf)]
    rows += [ratio_row(SECTION, f"early exit / all {N} tokens", rows[0], rows[1], conf),
             ratio_row(SECTION, f"early exit / {K} tokens", rows[0], rows[2],
                       {**conf, "target": ">= 0.95"})]
    return rows
