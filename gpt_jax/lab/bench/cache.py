"""Section "cache": a decode step's read of its KV cache, at batch 8 with a long prompt and as
many new tokens (issue 29 item 3): what reading the not yet written entries costs with XLA's
attention, how much the segmented cache (gpt_jax/generation/loop.py, segment_lengths) and the
CPU kernel that reads the written entries only (gpt_jax/generation/cache_attention.py) save.

Greedy calls on the same weights and prompts, interleaved, their tokens checked equal:
- "whole cache" (cache_segments=1, XLA's attention): the loop before issue 29; every step
  reads P + N - 1 entries, most of them zeros early in the decode;
- "segments" (loop.SEGMENTS caches, XLA's attention): what generate() runs where the kernel
  cannot (no compiler, another backend, bfloat16);
- "fine segments" (FINE caches, strides of at least loop.STRIDE, XLA's attention): each step
  reads at most a stride of entries it has not written; the bound any used-cache step gets
  near, at FINE times the compile time;
- "kernel" (the segments, attention by the kernel): generate()'s default on CPU;
- "prefill" (one new token): the part of every call that is not decode steps, so that step
  times are (call - prefill) / (N - 1).
Then single decode steps, where call-to-call noise is far smaller than in 30-second calls: at
a few indices of the same decode, one step over the whole cache with XLA's attention, over a
cache of exactly the entries written so far (what a step that reads the used cache only
reads, all else equal), and over the whole cache with the kernel; their means give the
unwritten share and the kernel's saving again, step by step.
Derived rows, per decode step: the unwritten entries' share of the whole-cache step, measured
(1 - fine / whole) and modelled (their bytes over all bytes the steps read, averaged over
steps); what the segments and the kernel save (1 - x / whole), the kernel's also as a multiple
of the measured share (the target: at least 1). The shares are differences of timings: on a
loaded machine, or at --tiny sizes where the cache is a sliver of a step, they can come out at
or below 0.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.generation.cache_attention import uses_kernel
from gpt_jax.generation.decoding import generate_args
from gpt_jax.generation.loop import DECODER, SEGMENTS, segment_lengths
from gpt_jax.generation.step import decode_mask, decode_step, decode_weights, weight_bytes
from gpt_jax.lab.bench.harness import Context, Result, ratio_row, result_from_timing
from gpt_jax.model.gpt import init_params
from gpt_jax.utils.timing import Timing, time_calls

SECTION = "cache"
FINE = 8
# label: (attention, cache segments); "xla" is GPTConfig.attn_impl="xla", "auto" the default
CALLS = {"whole cache": ("xla", 1), "segments": ("xla", SEGMENTS),
         "fine segments": ("xla", FINE), "kernel": ("auto", SEGMENTS)}


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
    """Batch 8, prompt P and N new tokens (512 + 512 for GPT-2; 16 + 200 with --tiny): the
    calls of CALLS and a prefill-only call; tokens/s, compile seconds, per-step shares."""
    name, cfg = ctx.model()
    B, P, N = (8, 16, 200) if ctx.tiny else (8, 512, 512)
    P, N = min(P, cfg.block_size // 2), min(N, cfg.block_size - min(P, cfg.block_size // 2))
    params = init_params(cfg, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(0, cfg.n_real_vocab, (B, P))
    fns, compile_s, tokens = {}, {}, {}
    for label, (impl, n) in {**CALLS, "prefill": ("xla", 1)}.items():
        args, static = generate_args(params, cfg.replace(attn_impl=impl), prompts,
                                     1 if label == "prefill" else N, temperature=0)
        t0 = time.perf_counter()
        fn = DECODER.lower(*args, **static, cache_segments=n).compile()
        compile_s[label] = time.perf_counter() - t0
        tokens[label] = np.asarray(fn(*args))          # also the warm-up call
        fns[label] = lambda fn=fn, args=args: fn(*args)
    S = P + N - 1
    conf = {"preset": name, "batch": B, "prompt": P, "new_tokens": N, "dtype": cfg.dtype,
            "greedy": True, "whole_cache_entries": S, "kernel": uses_kernel(cfg, cfg.dtype),
            "tokens_equal_whole_cache": all(bool((tokens[label] == tokens["whole cache"]).all())
                                            for label in CALLS)}
    t = time_calls(fns, min(ctx.repeats, 3), warmup=0)
    rows = {label: result_from_timing(
        SECTION, f"{label} b{B}, {P} + {N}", t[label], work=B * N, metric="tokens/s",
        unit="tokens/s", compile_s=compile_s[label],
        config={**conf, "attention": impl,
                "cache_lengths": list(segment_lengths(P, S, n))})
        for label, (impl, n) in CALLS.items()}
    out = list(rows.values())
    out.append(Result(SECTION, f"prefill b{B}, {P} + 1", "seconds per call",
                      t["prefill"].median, "s", conf, median=t["prefill"].median,
                      min=t["prefill"].min, max=t["prefill"].max,
                      repeats=len(t["prefill"].times), compile_s=compile_s["prefill"]))
    out += [ratio_row(SECTION, f"{label} / whole cache b{B}", rows[label],
                      rows["whole cache"], conf) for label in ("segments", "fine segments",
                                                               "kernel")]
    step = {label: (t[label].median - t["prefill"].median) / (N - 1) for label in CALLS}
    saved = {label: 1 - step[label] / step["whole cache"] for label in CALLS}
    measured = saved["fine segments"]
    wbytes = weight_bytes(decode_weights(params, cfg))
    out += [Result(SECTION, "decode step, whole cache", "ms per step",
                   step["whole cache"] * 1e3, "ms", conf),
            Result(SECTION, "unwritten entries' share of the whole-cache step",
                   "measured (1 - fine / whole)", measured, "fraction", conf),
            Result(SECTION, "unwritten entries' share of the whole-cache step",
                   "modelled by bytes", unwritten_share(cfg, B, P, N, (S,), wbytes),
                   "fraction", conf),
            Result(SECTION, "unwritten entries still read with segments", "modelled by bytes",
                   unwritten_share(cfg, B, P, N, segment_lengths(P, S, SEGMENTS), wbytes),
                   "fraction", conf)]
    out += [Result(SECTION, f"step time {label} save (1 - {label} / whole)",
                   "share of the step", saved[label], "fraction", conf)
            for label in ("segments", "kernel")]
    if measured > 0:      # below 0 the machine's noise exceeds the share: no multiple of it
        out += [Result(SECTION, f"{who} saving over the measured share", "multiple",
                       saved[label] / measured, "fraction", conf)
                for label, who in (("segments", "the segments'"), ("kernel", "the kernel's"))]
    return out + single_steps(ctx, params, cfg, B, P, N, conf)


STEPS = 4          # decode steps per timed call of single_steps


def single_steps(ctx: Context, params, cfg, B: int, P: int, N: int, conf: dict) -> list[Result]:
    """One decode step alone at 5 indices of a P + N decode (its first, quarters and last):
    "whole" (XLA's attention over P + N - 1 entries), "exact" (XLA's over a cache of index + 1
    entries, compiled per index) and "kernel" (the kernel over the whole cache). The caches
    are donated, so each step writes in place as in the loop. Rows: ms per step of each,
    and the means over indices of 1 - exact / whole (the unwritten share) and of
    1 - kernel / whole (the kernel's saving)."""
    S = P + N - 1
    weights = decode_weights(params, cfg)
    pad, tok = jnp.zeros((B,), jnp.int32), jnp.zeros((B,), jnp.int32)
    zeros = lambda L: tuple(tuple(jnp.zeros((B * cfg.n_head, L, cfg.head_dim), cfg.compute_dtype)
                                  for _ in "kv") for _ in range(cfg.n_layer))

    def compiled(impl, L):                     # one step over a cache of L entries
        def step(weights, cache, index):
            mask = decode_mask(pad, index[None], L)[:, 0, 0]
            return decode_step(weights, cfg.replace(attn_impl=impl), tok, index - pad, mask,
                               cache, index)
        return jax.jit(step, donate_argnums=1).lower(weights, zeros(L), jnp.int32(0)).compile()

    caches = {"whole": zeros(S)}               # the two whole-cache steps pass one cache along

    def call(fn, key, index):                  # STEPS steps at index, the cache written back
        def run():
            for _ in range(STEPS):
                logits, caches[key] = fn(weights, caches[key], jnp.int32(index))
            return logits
        return run
    whole, kernel = compiled("xla", S), compiled("auto", S)
    fns = {}
    for k in sorted({1, N // 4, N // 2, 3 * N // 4, N - 1}):
        index = P + k - 1
        caches[index] = zeros(index + 1)
        fns[("whole", index)] = call(whole, "whole", index)
        fns[("exact", index)] = call(compiled("xla", index + 1), index, index)
        fns[("kernel", index)] = call(kernel, "whole", index)
    t = time_calls(fns, max(ctx.repeats, 5))
    per_step = {key: Timing([x / STEPS for x in timing.times]) for key, timing in t.items()}
    out, share, saving = [], [], []
    for (label, index), timing in per_step.items():
        out.append(Result(SECTION, f"one step, {label}, {index + 1} of {S} entries written",
                          "ms per step", timing.median * 1e3, "ms", conf, median=timing.median,
                          min=timing.min, max=timing.max, repeats=len(timing.times)))
        if label == "whole":
            share.append(1 - per_step[("exact", index)].median / timing.median)
            saving.append(1 - per_step[("kernel", index)].median / timing.median)
    out += [Result(SECTION, "one step: unwritten entries' share (1 - exact / whole)",
                   "mean over indices", float(np.mean(share)), "fraction", conf),
            Result(SECTION, "one step: the kernel's saving (1 - kernel / whole)",
                   "mean over indices", float(np.mean(saving)), "fraction", conf)]
    return out
