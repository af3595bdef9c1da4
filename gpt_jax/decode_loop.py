"""decode_tokens: the pure function generate() compiles (gpt_jax/generation.py holds its
compiled form, the checks and the entry points).

It prefills the whole left-padded prompt batch in one pass, then loops decode.decode_step over
the KV cache: a lax.scan over every new token, or, with eos_id or stop strings (early exit) or
streaming, a lax.while_loop that ends once every row is done, writing into preallocated
buffers. Each step's token comes from processors.pick (transformers' processors and warpers,
eos and stop strings); streaming adds one host callback per step (streaming.report).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gpt_jax import processors, streaming
from gpt_jax.config import GPTConfig
from gpt_jax.decode import decode_mask, decode_step, prefill, widened
from gpt_jax.model import mask_vocab
from gpt_jax.processors import Plan

STATIC = ("cfg", "max_new_tokens", "greedy", "use_top_k", "use_top_p", "return_logits", "plan")


def decode_tokens(params, weights, tokens, pad, key, temperature, top_k, top_p, eos_id,
                  extra=None, *, cfg: GPTConfig, max_new_tokens: int, greedy: bool,
                  use_top_k: bool, use_top_p: bool, return_logits: bool, plan: Plan = Plan()):
    """The pure decoding function that generate() compiles: int32 (B, max_new_tokens) new
    tokens, then, where asked, their float32 (B, N, V) logits (return_logits) and float32
    (B, N) log-probabilities (plan.logprobs), as a tuple.

    params, and weights = decode_weights(params); tokens (B, P) left-padded prompts with pad
    (B,) the padding of each row (as from left_pad); key one PRNG key; temperature, top_k,
    top_p, eos_id scalars (eos_id -1: none); extra: the processors' runtime values
    (generate_args: pad_id, penalty, min_p, min_new, stop tables, stream_id, ...). The keyword
    arguments are static (see STATIC): greedy skips the filters, use_top_k / use_top_p switch
    those filters on, plan (processors.Plan) the processors, stop strings, early exit and
    streaming. Without early exit the loop is a lax.scan over every token; with it, a
    while_loop that ends when every row is done."""
    B, P = tokens.shape
    N = max_new_tokens
    S = P + N - 1                            # the last new token is sampled, never fed back
    s = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "eos_id": eos_id,
         "pad_id": eos_id, **(extra or {})}
    # -inf, not the model's -1e9, for padded ids: no temperature can make them likely.
    pick = lambda logits, key, st, made: processors.pick(
        plan, s, mask_vocab(logits, cfg.n_real_vocab), key, st, made, P=P, pad=pad,
        greedy=greedy, use_top_k=use_top_k, use_top_p=use_top_p)

    # Prefill: the whole prompt in one pass writes cache[:, :P]; logits of index P-1 only.
    logits, cache = prefill(params, weights, cfg, tokens, pad, S)   # cache (B*H, S, D)
    keys = jax.random.split(key, N)          # one key per new token: a seed fixes the sample
    st = processors.init_state(plan, s, tokens, pad, N, cfg.vocab_size)
    first, lp, st = pick(logits[:, 0], keys[0], st, 0)
    go = streaming.report(s, 0, first, lp, st["done"]) if plan.stream else True

    if B > 1:                                # narrow weights pay only in one-row products
        weights = widened(weights, cfg.compute_dtype)

    def step(cache, tok, st, i):             # feed token i - 1 (at index P + i - 1), pick token i
        index = P + i - 1
        logits, cache = decode_step(weights, cfg, tok, index - pad,
                                    decode_mask(pad, index[None], S)[:, 0, 0], cache, index)
        new, lp, st = pick(logits, keys[i], st, i)
        return cache, new, lp, st, logits

    if not (plan.early_exit or plan.stream):
        def body(carry, i):
            cache, tok, st = carry
            cache, new, lp, st, logits = step(cache, tok, st, i)
            return (cache, new, st), (new, logits if return_logits else None, lp)

        _, (rest, rest_logits, rest_lp) = jax.lax.scan(body, (cache, first, st),
                                                       jnp.arange(1, N))
        out = [jnp.concatenate([first[:, None], rest.T], axis=1)]              # (B, N)
        if return_logits:
            out.append(jnp.concatenate([logits, jnp.swapaxes(rest_logits, 0, 1)], axis=1))
        if plan.logprobs:
            out.append(jnp.concatenate([lp[:, None], rest_lp.T], axis=1))
        return out[0] if len(out) == 1 else tuple(out)

    # Early exit: the same steps in a while_loop, writing into buffers (the rest stay padding).
    bufs = {"tok": jnp.full((B, N), s["pad_id"], jnp.int32).at[:, 0].set(first)}
    if return_logits:
        bufs["logits"] = jnp.zeros((B, N, logits.shape[-1]), jnp.float32).at[:, 0].set(
            logits[:, 0])
    if plan.logprobs:
        bufs["lp"] = jnp.zeros((B, N), jnp.float32).at[:, 0].set(lp)

    def cond(carry):
        _, _, st, i, _, go = carry
        return (i < N) & ~jnp.all(st["done"]) & go

    def body(carry):
        cache, tok, st, i, bufs, _ = carry
        cache, new, lp, st, logits = step(cache, tok, st, i)
        put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x[:, None], i, 1)
        bufs = dict(bufs, tok=put(bufs["tok"], new))
        if return_logits:
            bufs["logits"] = put(bufs["logits"], logits)
        if plan.logprobs:
            bufs["lp"] = put(bufs["lp"], lp)
        go = streaming.report(s, i, new, lp, st["done"]) if plan.stream else True
        return cache, new, st, i + 1, bufs, jnp.asarray(go)

    carry = (cache, first, st, jnp.int32(1), bufs, jnp.asarray(go))
    bufs = jax.lax.while_loop(cond, body, carry)[4]
    out = [bufs[k] for k in ("tok", "logits", "lp") if k in bufs]
    return out[0] if len(out) == 1 else tuple(out)
