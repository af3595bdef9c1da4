"""decode_tokens: the pure function generate() compiles (gpt_jax/generation/decoding.py holds its
compiled form, the checks and the entry points).

It prefills the whole left-padded prompt batch in one pass, then loops decode.decode_step over
the KV cache: a lax.scan over every new token, or, with eos_id or stop strings (early exit) or
streaming, a lax.while_loop that ends once every row is done, writing into preallocated
buffers; that loop runs as two programs (Decoder.run): the prefill and the first cache segment,
then the later segments only when a row still decodes. Each step's token comes from
processors.pick (transformers' processors and warpers, eos and stop strings); streaming adds
one host callback per step (streaming.report).
"""
from __future__ import annotations

import functools
import weakref
from typing import Optional

import jax
import jax.numpy as jnp

import gpt_jax.generation.channel as channel
import gpt_jax.generation.processors as processors
from gpt_jax.generation.processors import Plan, Settings
from gpt_jax.generation.step import (CountedJit, decode_mask, decode_step, decode_weights,
                                     prefill, widened)
from gpt_jax.model.checks import check_params
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import mask_vocab

STATIC = ("cfg", "max_new_tokens", "greedy", "use_top_k", "use_top_p", "return_logits", "plan",
          "cache_segments", "part")

OUTPUTS = ("tok", "logits", "lp")           # the loop's buffers, in the order it returns them

# segment_lengths(): a decode loop's cache starts with room for FIRST new tokens, then grows
# SEGMENTS - 1 times in strides of at least STRIDE, so a step reads at most a stride more
# entries than it has written; a decode of at most STRIDE new tokens keeps one cache. FIRST is
# small because an early exit reads the first segment only: with 64 it read 96 entries where a
# 10-token call reads 41, 2-5% slower at batch 4 (gpt2, 2026-12-07); with 16, 0.999-1.01x.
FIRST, STRIDE, SEGMENTS = 16, 64, 4


def decode_tokens(params, weights, tokens, pad, key, temperature, top_k, top_p, eos_id,
                  values=None, carry=None, bufs=None, *, cfg: GPTConfig, max_new_tokens: int,
                  greedy: bool, use_top_k: bool, use_top_p: bool, return_logits: bool,
                  plan: Plan = Plan(), cache_segments: int = 0, part: str = "whole"):
    """The pure decoding function that generate() compiles: int32 (B, max_new_tokens) new
    tokens, then, where asked, their float32 (B, N, V) logits (return_logits) and float32
    (B, N) log-probabilities (plan.logprobs), as a tuple.

    params, and weights = decode_weights(params); tokens (B, P) left-padded prompts with pad
    (B,) the padding of each row (as from left_pad); key one PRNG key; temperature, top_k,
    top_p, eos_id scalars (eos_id -1: none); values: the processors' runtime values
    (processors.Values: pad_id, penalty, min_p, min_new, stop tables, stream_id). The keyword
    arguments are static (see STATIC): greedy skips the filters, use_top_k / use_top_p switch
    those filters on, plan (processors.Plan) the processors, stop strings, early exit and
    streaming. Without early exit the loop is a lax.scan over every token; with it, a
    while_loop that ends when every row is done. cache_segments (static): how many lengths the
    cache grows through (segment_lengths; 0: SEGMENTS), so that steps read little more of it
    than is written; 1 keeps one cache of every entry from the start (bench.py compares).

    part (static: "whole", "start" or "rest") splits the while_loop into two programs (see
    Decoder for why): "start" returns (carry,
    bufs, more): the loop's state after the first segment, its output buffers and whether a
    row still decodes (None when the first segment is the only one); "rest" takes that carry
    and bufs and returns the bufs once every segment has run (outputs(bufs) is then what
    "whole" returns). The scan path is always "whole"."""
    B, P = tokens.shape
    N = max_new_tokens
    S = P + N - 1                            # the last new token is sampled, never fed back
    s = Settings.of(temperature, top_k, top_p, eos_id, values)
    # -inf, not the model's -1e9, for padded ids: no temperature can make them likely.
    pick = lambda logits, key, st, made: processors.pick(
        plan, s, mask_vocab(logits, cfg.n_real_vocab), key, st, made, P=P, pad=pad,
        greedy=greedy, use_top_k=use_top_k, use_top_p=use_top_p)

    lengths = segment_lengths(P, S, cache_segments or SEGMENTS)
    keys = jax.random.split(key, N)          # one key per new token: a seed fixes the sample
    if part != "rest":
        # Prefill: the whole prompt in one pass writes cache[:, :P]; logits of index P-1 only.
        # The cache starts at the first segment's length and grows between segments.
        logits, cache = prefill(params, weights, cfg, tokens, pad, lengths[0])  # (B*H, L0, D)
        st = processors.init_state(plan, s, tokens, pad, N, cfg.vocab_size)
        first, lp, st = pick(logits[:, 0], keys[0], st, 0)
        go = channel.report(s.values.stream_id, 0, first, lp, st.done) if plan.stream else True

    if B > 1:                                # narrow weights pay only in one-row products
        weights = widened(weights, cfg.compute_dtype)

    def step(cache, tok, st, i):             # feed token i - 1 (at index P + i - 1), pick token i
        index = P + i - 1
        L = cache[0][0].shape[1]             # this segment's cache length
        logits, cache = decode_step(weights, cfg, tok, index - pad,
                                    decode_mask(pad, index[None], L)[:, 0, 0], cache, index)
        new, lp, st = pick(logits, keys[i], st, i)
        return cache, new, lp, st, logits

    # Segment j feeds the tokens at cache indices [lengths[j-1], lengths[j]): steps i up to
    # ends[j] (exclusive), over a cache of lengths[j] entries.
    ends = [L - P + 1 for L in lengths]
    if not loops_while(plan):
        def body(carry, i):
            cache, tok, st = carry
            cache, new, lp, st, logits = step(cache, tok, st, i)
            return (cache, new, st), (new, logits if return_logits else None, lp)

        carry, parts, start = (cache, first, st), [], 1
        for j, end in enumerate(ends):
            if j:
                carry = (grow(carry[0], lengths[j]),) + carry[1:]
            carry, part = jax.lax.scan(body, carry, jnp.arange(start, end))
            parts.append(part)
            start = end
        rest, rest_logits, rest_lp = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
        out = [jnp.concatenate([first[:, None], rest.T], axis=1)]              # (B, N)
        if return_logits:
            out.append(jnp.concatenate([logits, jnp.swapaxes(rest_logits, 0, 1)], axis=1))
        if plan.logprobs:
            out.append(jnp.concatenate([lp[:, None], rest_lp.T], axis=1))
        return out[0] if len(out) == 1 else tuple(out)

    # Early exit: the same steps in a while_loop, writing into buffers (the rest stay padding).
    if part != "rest":
        bufs = {"tok": jnp.full((B, N), s.pad_id, jnp.int32).at[:, 0].set(first)}
        if return_logits:
            bufs["logits"] = jnp.zeros((B, N, logits.shape[-1]), jnp.float32).at[:, 0].set(
                logits[:, 0])
        if plan.logprobs:
            bufs["lp"] = jnp.zeros((B, N), jnp.float32).at[:, 0].set(lp)

    def more(carry):                         # some row still decodes
        _, _, st, i, _, go = carry
        return (i < N) & ~jnp.all(st.done) & go

    def body(carry):
        cache, tok, st, i, bufs, _ = carry
        cache, new, lp, st, logits = step(cache, tok, st, i)
        put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None], i, 1)
        bufs = dict(bufs, tok=put(bufs["tok"], new))
        if return_logits:
            bufs["logits"] = put(bufs["logits"], logits)
        if plan.logprobs:
            bufs["lp"] = put(bufs["lp"], lp)
        go = channel.report(s.values.stream_id, i, new, lp, st.done) if plan.stream else True
        return cache, new, st, i + 1, bufs, jnp.asarray(go)

    def segment(j, carry):                   # the steps over segment j's cache
        return jax.lax.while_loop(lambda c: more(c) & (c[3] < ends[j]), body, carry)

    def run(j, carry):                       # segments j, j + 1, ...: the carry less its cache
        carry = segment(j, carry)
        if j + 1 == len(ends):
            return carry[1:]
        # The next segment's cache is made only if a row still decodes: an early exit skips
        # the copy as well as the steps.
        return jax.lax.cond(more(carry),
                            lambda c: run(j + 1, (grow(c[0], lengths[j + 1]),) + c[1:]),
                            lambda c: c[1:], carry)

    if part == "rest":                       # carry: (cache, tok, st, i, go) after segment 0
        cache, tok, st, i, go = carry
        return run(1, (grow(cache, lengths[1]), tok, st, i, bufs, go))[3]
    carry = (cache, first, st, jnp.int32(1), bufs, jnp.asarray(go))
    if part == "start":
        carry = segment(0, carry)
        cache, tok, st, i, bufs, go = carry
        return (cache, tok, st, i, go), bufs, more(carry) if len(ends) > 1 else None
    return outputs(run(0, carry)[3])


def loops_while(plan: Plan) -> bool:
    """Whether decode_tokens runs a while_loop (early exit or streaming), not a scan."""
    return plan.early_exit or plan.stream


def outputs(bufs: dict):
    """The while_loop's result from its buffers: the tokens, or a tuple (tokens, then logits
    and log-probs where the call asked for them), as decode_tokens returns."""
    out = [bufs[k] for k in OUTPUTS if k in bufs]
    return out[0] if len(out) == 1 else tuple(out)


def segment_lengths(P: int, S: int, n: int = SEGMENTS) -> tuple[int, ...]:
    """The at most n cache lengths decode_tokens' loop grows through, the last S, for a prompt
    of P: the loop starts with room for FIRST new tokens, then grows the cache up to n - 1
    times in equal strides (of at least STRIDE), one copy each; one length, S, when the decode
    is at most STRIDE new tokens or n is 1.

    Why: a step over a cache of L entries reads all L of them (XLA has no dynamic shapes, and a
    block of the cache sliced at a traced index is copied before the product reads it, which
    costs more than it saves), so a loop whose cache has room for every new token from the
    start reads the unwritten entries too. Each segment is its own compiled step, so compile
    time grows with n; P + FIRST is all that an early exit soon after the prompt reads."""
    if S - P <= STRIDE or n <= 1:
        return (S,)
    rest = S - P - FIRST
    n = min(n - 1, -(-rest // STRIDE))
    return (P + FIRST,) + tuple(P + FIRST + -(-rest * k // n) for k in range(1, n + 1))


def grow(cache, length: int):
    """The heads-major cache (B*H, L, D) per layer, zero-padded to `length` entries."""
    return jax.tree.map(lambda a: jnp.pad(a, ((0, 0), (0, length - a.shape[1]), (0, 0))),
                        cache)


# -- the function's compiled form, and the weights laid out for it ---------------------------

class Decoder(CountedJit):
    """decode_tokens compiled, and what generate() keeps between calls.

    run(*args, **static) calls the jitted decode_tokens: one program per static shape (batch,
    bucketed prompt length, and the STATIC arguments). trace_count counts the times it was
    traced, so a caller can see that calls with shapes seen before reused their program.
    compile(*args, **static) compiles ahead of time what run would call.

    A while_loop decode (early exit, streaming) runs as two programs: "start" (the prefill and
    the first cache segment), then "rest" only when a row still decodes after it. Why: XLA:CPU
    takes one temporary buffer per call for the whole program, and a single program's would
    hold every segment's cache, taken or not (362 MB at batch 4, 512 new tokens). glibc serves
    an allocation that large as fresh pages from the kernel each call, so a call that exits
    early faulted in the ~30 MB its first segment writes, every call (7,800 minor faults,
    ~5% of a 10-token call). The start program's buffers are its own and small.

    weights(params, cfg, fmt) is decode_weights(params, cfg, fmt), made once per params and
    format: on CPU a transposed copy of the Dense kernels (most of the weights), in a bfloat16
    run or format a bfloat16 copy, for int8 a quantised one. The copy for the last params is
    kept while those params live: it holds weak references to their leaves, and drops the copy
    when one of them dies, so repeated generate() calls skip the work and a model that is let
    go takes its copy with it. Only immutable jax Arrays are cached (numpy arrays could change
    in place). cached_weights is the copy held now, or None.
    """

    def __init__(self):
        super().__init__(decode_tokens, STATIC, donate_argnames=("bufs",))
        self._last = None   # (weak refs to the params' leaves, (cfg, fmt), their weights)

    def run(self, *args, **static):
        if not loops_while(static.get("plan", Plan())):
            return super().run(*args, **static)
        part = lambda name: functools.partial(CountedJit.run, self, **static, part=name)
        return Programs(part("start"), part("rest"))(*args)

    def compile(self, *args, **static):
        """What run(*args, **static) calls, compiled ahead of time: a jax Compiled for a scan,
        Programs (start, rest) for a while_loop."""
        if not loops_while(static.get("plan", Plan())):
            return self.lower(*args, **static).compile()
        start = self.lower(*args, **static, part="start").compile()
        carry, bufs, more = start.out_info
        rest = None if more is None else \
            self.lower(*args, carry, bufs, **static, part="rest").compile()
        return Programs(start, rest)

    @property
    def cached_weights(self) -> Optional[dict]:
        return None if self._last is None else self._last[2]

    def weights(self, params, cfg: GPTConfig, fmt: Optional[str] = None) -> dict:
        leaves = jax.tree_util.tree_leaves(params)
        if self._last is not None:
            refs, for_cfg, weights = self._last
            if for_cfg == (cfg, fmt) and len(refs) == len(leaves) and \
                    all(r() is x for r, x in zip(refs, leaves)):
                return weights
        self._last = None                     # free the old copy before making the new one
        check_params(params, cfg)             # once per params: a hit above was checked before
        weights = decode_weights(params, cfg, fmt)  # op by op: leaves it keeps are not copied
        if all(isinstance(x, jax.Array) for x in leaves):
            def forget(_):                    # a leaf died: so did these params
                if self._last is not None and self._last[2] is weights:
                    self._last = None
            self._last = ([weakref.ref(x, forget) for x in leaves], (cfg, fmt), weights)
        return weights


DECODER = Decoder()  # the one generate() and compile_generate() use


class Programs:
    """A while_loop decode as Decoder.run calls it, its programs jitted or compiled ahead of
    time: start, then rest only while a row still decodes (start returns more=None, and a
    compiled rest is None, when the first cache segment is the only one). Called as
    decode_tokens(*args) is; memory_analysis() is the compiled start program's, the one every
    call runs."""

    def __init__(self, start, rest):
        self.start, self.rest = start, rest

    def __call__(self, *args):
        carry, bufs, more = self.start(*args)
        if more is not None and more:        # the host waits for the first segment here
            bufs = self.rest(*args, carry, bufs)
        return outputs(bufs)

    def memory_analysis(self):
        return self.start.memory_analysis()
