"""Section "cache": the decode loop's KV cache grown in segments (gpt_jax/generation/loop.py,
segment_lengths) against one whole preallocated cache, at batch 8 with a long prompt and as
many new tokens (issue 29 item 3): what reading the not yet written entries cost before, and
how much of it the segments save.

Three greedy calls on the same weights and prompts, interleaved, their tokens checked equal:
- "whole cache" (cache_segments=1): the loop before segments; every step reads P + N - 1
  entries, most of them zeros early in the decode;
- "segments": generate()'s default (loop.SEGMENTS caches);
- "fine segments" (FINE caches, strides of at least loop.STRIDE): each step reads at most a
  stride of entries it has not written; the bound any used-cache step gets near, at FINE times
  the compile time.
Derived rows: the unwritten entries' share of the whole-cache call, measured
(1 - fine / whole by time) and modelled (their bytes over all bytes the steps read, averaged
over steps); and the share the default saves (1 - segments / whole), also as a fraction of
the measured share. The shares are differences of timings: on a loaded machine, or at
--tiny sizes where the cache is a sliver of a step, they can come out at or below 0.
"""
from __future__ import annotations

import time

import jax
import numpy as np

from gpt_jax.generation.decoding import generate_args
from gpt_jax.generation.loop import DECODER, SEGMENTS, segment_lengths
from gpt_jax.generation.step import decode_weights, weight_bytes
from gpt_jax.lab.bench.harness import Context, Result, ratio_row, result_from_timing
from gpt_jax.model.gpt import init_params
from gpt_jax.utils.timing import time_calls

SECTION = "cache"
FINE = 8
CALLS = {"whole cache": 1, "segments": SEGMENTS, "fine segments": FINE}


def unwritten_share(cfg, B: int, P: int, N: int, lengths: tuple[int, ...],
                    weights_bytes: int) -> float:
    """The modelled share of a decode's step bytes that are cache entries not yet written:
    each step (feeding index P - 1 + i, i = 1 .. N - 1) reads every weight byte and the
    cache of the segment it runs in, of which index + 1 entries are written."""
    entry = 2 * cfg.n_layer * B * cfg.n_embd * np.dtype(cfg.compute_dtype).itemsize
    shares = []
    for i in range(1, N):
        index = P + i - 1
        L = next(n for n in lengths if index < n)
        shares.append((L - index - 1) * entry / (weights_bytes + L * entry))
    return float(np.mean(shares))


def run(ctx: Context) -> list[Result]:
    """Batch 8, prompt P and N new tokens (512 + 512 for GPT-2; 16 + 200 with --tiny):
    whole cache vs segments vs fine segments, tokens/s, compile seconds, and the shares."""
    name, cfg = ctx.model()
    B, P, N = (8, 16, 200) if ctx.tiny else (8, 512, 512)
    P, N = min(P, cfg.block_size // 2), min(N, cfg.block_size - min(P, cfg.block_size // 2))
    params = init_params(cfg, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(0, cfg.n_real_vocab, (B, P))
    args, static = generate_args(params, cfg, prompts, N, temperature=0)
    fns, compile_s, tokens = {}, {}, {}
    for label, n in CALLS.items():
        t0 = time.perf_counter()
        fn = DECODER.lower(*args, **static, cache_segments=n).compile()
        compile_s[label] = time.perf_counter() - t0
        tokens[label] = np.asarray(fn(*args))          # also the warm-up call
        fns[label] = lambda fn=fn: fn(*args)
    S = P + N - 1
    conf = {"preset": name, "batch": B, "prompt": P, "new_tokens": N, "dtype": cfg.dtype,
            "greedy": True, "whole_cache_entries": S,
            "tokens_equal_whole_cache": all(bool((t == tokens["whole cache"]).all())
                                            for t in tokens.values())}
    t = time_calls(fns, min(ctx.repeats, 3), warmup=0)
    rows = {label: result_from_timing(
        SECTION, f"{label} b{B}, {P} + {N}", t[label], work=B * N, metric="tokens/s",
        unit="tokens/s", compile_s=compile_s[label],
        config={**conf, "cache_lengths": list(segment_lengths(P, S, CALLS[label]))})
        for label in CALLS}
    out = list(rows.values())
    out += [ratio_row(SECTION, f"segments / whole cache b{B}", rows["segments"],
                      rows["whole cache"], conf),
            ratio_row(SECTION, f"fine segments / whole cache b{B}", rows["fine segments"],
                      rows["whole cache"], conf)]
    whole, seg, fine = (t[label].median for label in CALLS)
    measured, saved = 1 - fine / whole, 1 - seg / whole
    wbytes = weight_bytes(decode_weights(params, cfg))
    out += [Result(SECTION, "unwritten entries' share of the whole-cache call",
                   "measured (1 - fine / whole)", measured, "fraction", conf),
            Result(SECTION, "unwritten entries' share of the whole-cache call",
                   "modelled by bytes", unwritten_share(cfg, B, P, N, (S,), wbytes),
                   "fraction", conf),
            Result(SECTION, "unwritten entries still read with segments", "modelled by bytes",
                   unwritten_share(cfg, B, P, N, segment_lengths(P, S, SEGMENTS), wbytes),
                   "fraction", conf),
            Result(SECTION, "time segments save (1 - segments / whole)", "share of the call",
                   saved, "fraction", conf)]
    if measured > 0:      # below 0 the machine's noise exceeds the share: no fraction of it
        out.append(Result(SECTION, "of the measured share, segments save", "share saved",
                          saved / measured, "fraction", conf))
    return out
