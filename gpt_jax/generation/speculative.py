"""Speculative decoding in the compiled loop: prompt lookup and a draft model propose K tokens,
the target verifies them in one forward over its KV cache (verify.py), and each row keeps the
longest agreeing prefix plus the target's own next token.

Per verify step and row (n new tokens so far; the cache holds every token but the last):
  1. propose K tokens: prompt lookup (transformers 5.24.0,
     generation/candidate_generator.py:1061-1154: the first earlier occurrence of the row's
     last g-gram, g = max_matching_ngram_size .. 1, and the up to K tokens after it, cut before
     an eos_id), or the draft model's K greedy or sampled steps over its own cache;
  2. feed the last token and the K proposals at cache index P + n - 1 (one forward, K + 1
     positions), accept m of them (verify.accept_greedy / accept_sampled) and take m + 1 tokens;
  3. the row's length moves to n + m + 1: the cache entries of the rejected proposals stay
     where they are, unread (the mask stops at each query), until the next step writes there.
Rows advance by their own m (per-row cache index), in one lax.while_loop that ends when every
row has max_new_tokens or emitted eos_id: one program per static shape (batch, bucketed prompt
length, max_new_tokens, K, the draft's config, greedy or sampling filters).

The draft keeps its own cache one token behind the target's: it re-feeds the token before the
last at each step (two positions, then K - 1 one-token steps), so its cache is whole whether
the target accepted all K proposals (the K-th was never fed to the draft) or fewer.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import gpt_jax.generation.stopping as stopping
from gpt_jax.errors import UserError
from gpt_jax.generation.config import GenerationConfig
from gpt_jax.generation.loop import Decoder
from gpt_jax.generation.memory import check_memory
from gpt_jax.generation.processors import Plan
from gpt_jax.generation.sampling import first_argmax, sample_logits
from gpt_jax.generation.step import CountedJit, prefill, widened
from gpt_jax.generation.verify import accept_greedy, accept_sampled, extend_step, warp
from gpt_jax.model.checks import check_causal, check_finite, scalar
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import mask_vocab

MAX_MATCHING_NGRAM_SIZE = 2   # transformers' default (candidate_generator.py:1046)
NUM_DRAFT_TOKENS = 5          # our default K for a draft model (transformers' is 20, adaptive)


class Speculation(NamedTuple):
    """The checked speculative settings: K proposals per step, from prompt lookup (ngram, the
    longest n-gram matched) or from a draft (params, cfg)."""
    k: int
    ngram: int = 0
    draft_params: Optional[dict] = None
    draft_cfg: Optional[GPTConfig] = None


class Stats(NamedTuple):
    """Per row: verify steps run, proposals accepted, new tokens made (to max_new_tokens or
    eos_id). tokens / steps is the tokens per target forward (a plain decode makes 1)."""
    steps: np.ndarray
    accepted: np.ndarray
    tokens: np.ndarray


def requested(g: GenerationConfig) -> bool:
    """Whether g asks for speculative decoding (any of its settings off their defaults)."""
    return (g.prompt_lookup_num_tokens is not None or g.draft is not None or
            g.num_draft_tokens is not None or g.max_matching_ngram_size is not None)


def check_speculation(g: GenerationConfig, cfg: GPTConfig, plan: Plan,
                      return_logits: bool) -> Speculation:
    """The speculative settings of g, checked against each other and against what else g
    asks (plan: generate_args' processors and stop strings), or one UserError."""
    lookup, draft = g.prompt_lookup_num_tokens, g.draft
    if lookup is not None and draft is not None:
        raise UserError("pass either prompt_lookup_num_tokens (prompt lookup) or draft (a "
                        "draft model), not both")
    if g.num_draft_tokens is not None and draft is None:
        raise UserError("num_draft_tokens needs draft=(draft_params, draft_cfg); for prompt "
                        "lookup pass prompt_lookup_num_tokens")
    if g.max_matching_ngram_size is not None and lookup is None:
        raise UserError("max_matching_ngram_size needs prompt_lookup_num_tokens")
    others = [name for name, on in (
        ("repetition_penalty", plan.penalty), ("no_repeat_ngram_size", plan.ngram),
        ("min_new_tokens", plan.min_new), ("min_p", plan.min_p), ("logprobs", plan.logprobs),
        ("return_logits", return_logits), ("streaming", plan.stream)) if on]
    if others:
        raise UserError(f"speculative decoding (prompt_lookup_num_tokens / draft) runs with "
                        f"temperature, top_k, top_p, eos_id, stop strings and pad_id only, "
                        f"not with {', '.join(others)}: drop those or decode without "
                        f"speculation")
    if lookup is not None:
        k = _count(lookup, "prompt_lookup_num_tokens")
        n = MAX_MATCHING_NGRAM_SIZE if g.max_matching_ngram_size is None else \
            _count(g.max_matching_ngram_size, "max_matching_ngram_size")
        return Speculation(k=k, ngram=n)
    k = NUM_DRAFT_TOKENS if g.num_draft_tokens is None else \
        _count(g.num_draft_tokens, "num_draft_tokens")
    if not (isinstance(draft, tuple) and len(draft) == 2 and isinstance(draft[1], GPTConfig)):
        raise UserError(f"draft must be a tuple (draft_params, draft_cfg) with a GPTConfig, "
                        f"got {type(draft).__name__}")
    dp, dc = draft
    check_causal(dc, "a draft model (a KV cache)", "use a causal draft")
    if dc.vocab_size != cfg.vocab_size or dc.n_real_vocab != cfg.n_real_vocab:
        raise UserError(f"the draft's vocab_size {dc.vocab_size} differs from the target's "
                        f"{cfg.vocab_size}: a draft shares the target's tokenizer and ids")
    check_finite(dp)
    return Speculation(k=k, draft_params=dp, draft_cfg=dc)


def _count(x, name: str) -> int:
    n = scalar(x, integer=True)
    if n is None or n < 1:
        raise UserError(f"{name} must be an integer >= 1, got {x!r}")
    return n


# -- the proposers -----------------------------------------------------------------------------

def propose_lookup(seq, cur, pad, K: int, G: int, eos_id):
    """Prompt lookup, vectorised over rows. seq (B, L) each row's tokens (real from pad (B,)
    to cur (B,) exclusive). Returns (proposals (B, K), how many are real (B,)): for g = G .. 1,
    the first j with seq[j:j+g] == the row's last g tokens and j + g < cur (transformers'
    windows, less the one at the end, which leaves nothing to copy), and the tokens after it;
    rows of g or fewer real tokens skip that g (range(min(G, len - 1), 0, -1) there)."""
    B, L = seq.shape
    start = jnp.zeros((B,), jnp.int32)
    found = jnp.zeros((B,), bool)
    for g in range(G, 0, -1):
        J = L - g + 1
        gram = jnp.take_along_axis(seq, cur[:, None] - g + jnp.arange(g)[None, :], axis=1)
        same = jnp.ones((B, J), bool)
        for t in range(g):
            same &= seq[:, t:t + J] == gram[:, t:t + 1]
        j = jnp.arange(J)[None, :]
        same &= (j >= pad[:, None]) & (j + g < cur[:, None]) & (cur - pad > g)[:, None]
        first = jnp.min(jnp.where(same, j, L), axis=1)                    # (B,)
        hit = ~found & (first < L)
        start = jnp.where(hit, first + g, start)
        found |= hit
    n = jnp.where(found, jnp.minimum(K, cur - start), 0)
    proposed = jnp.take_along_axis(seq, jnp.minimum(start[:, None] + jnp.arange(K), L - 1),
                                   axis=1)
    # cut before an eos_id (candidate_generator.py:1136-1141), -1: none
    at_eos = (proposed == eos_id) & (eos_id >= 0)
    n = jnp.minimum(n, jnp.min(jnp.where(at_eos, jnp.arange(K)[None, :], K), axis=1))
    return proposed, n


def propose_draft(weights, cfg: GPTConfig, cache, seq, cur, pad, K: int, key, pick):
    """K draft steps: the draft re-feeds the token before the last and the last (its cache
    holds all before those), then each proposal but the K-th. pick(logits (B, V), key) ->
    (token (B,), its distribution (B, V) or None). Returns (proposals (B, K), their
    distributions (B, K, V) or None, the draft's cache)."""
    keys = jax.random.split(key, K)
    two = jnp.take_along_axis(seq, cur[:, None] - 2 + jnp.arange(2)[None, :], axis=1)
    logits, cache = extend_step(weights, cfg, two, cur - 2, pad, cache)
    tok, q = pick(logits[:, 1], keys[0])

    def step(carry, i):                          # feed proposal i - 1 at index cur - 1 + i - 1
        cache, tok = carry
        logits, cache = extend_step(weights, cfg, tok[:, None], cur - 2 + i, pad, cache)
        new, q = pick(logits[:, 0], keys[i])
        return (cache, new), (new, q)

    (cache, _), (rest, rest_q) = jax.lax.scan(step, (cache, tok), jnp.arange(2, K + 1))
    proposed = jnp.concatenate([tok[:, None], rest.T], axis=1)            # (B, K)
    probs = None if q is None else jnp.concatenate([q[:, None], jnp.swapaxes(rest_q, 0, 1)], 1)
    return proposed, probs, cache


# -- the loop ------------------------------------------------------------------------------

SPEC_STATIC = ("cfg", "max_new_tokens", "greedy", "use_top_k", "use_top_p", "k", "ngram",
               "draft_cfg", "stop_window")


def speculative_tokens(params, weights, tokens, pad, key, temperature, top_k, top_p, eos_id,
                       pad_id, draft_params=None, draft_weights=None, stop=None,
                       stop_in_prompt=None, *, cfg: GPTConfig, max_new_tokens: int,
                       greedy: bool, use_top_k: bool, use_top_p: bool, k: int, ngram: int = 0,
                       draft_cfg: Optional[GPTConfig] = None, stop_window: int = 0):
    """The pure function the speculative generate() compiles: (int32 (B, N) new tokens, pad_id
    after eos_id, as decode_tokens makes them; steps, accepted, made: int32 (B,) Stats).

    Arguments as decode_tokens' (gpt_jax/generation/loop.py); pad_id an int32 scalar; k the
    proposals per step; ngram > 0: prompt lookup with that longest n-gram; else a draft
    model, draft_params / draft_weights (decode_weights) / draft_cfg; stop (StopTables as
    arrays), stop_in_prompt and stop_window (static, the tables' window; 0: no stop strings)
    as decode_tokens' Values and Plan carry them."""
    B, P = tokens.shape
    N, K = max_new_tokens, k
    S = P + N + K            # cache: a row of N - 1 tokens still writes K + 1 at P + N - 1
    filters = dict(temperature=temperature, top_k=top_k if use_top_k else None,
                   top_p=top_p if use_top_p else None)

    def stops_at(seq, idx):
        """bool (B, T): whether a stop string ends at seq index idx (B, T) of each row. A stop
        depends only on the window of tokens up to it, so a row's accepted tokens are checked
        after the fact, all at once: plain decoding's state, rolled forward token by token,
        sees the same windows (padding, and the prompt unless stop_in_prompt, as sentinels)."""
        if not stop_window:
            return jnp.zeros(idx.shape, bool)
        win = idx[..., None] - stop_window + 1 + jnp.arange(stop_window)      # (B, T, M)
        tail = jnp.take_along_axis(seq[:, None, :], jnp.maximum(win, 0), axis=2)
        real = (win >= pad[:, None, None]) & ((win >= P) | stop_in_prompt)
        tail = jnp.where(real, tail, cfg.vocab_size).reshape(-1, stop_window)
        return stopping.stop_matched(stop, tail).reshape(idx.shape)

    logits, cache = prefill(params, weights, cfg, tokens, pad, S)
    key, k_first = jax.random.split(key)
    first = sample_logits(mask_vocab(logits[:, 0], cfg.n_real_vocab), k_first, greedy=greedy,
                          **filters)
    seq = jnp.concatenate([tokens, first[:, None], jnp.zeros((B, N + K), jnp.int32)], axis=1)
    n = jnp.ones((B,), jnp.int32)
    done = (first == eos_id) | stops_at(seq, P + jnp.zeros((B, 1), jnp.int32))[:, 0]
    weights = widened(weights, cfg.compute_dtype)      # every product has several rows
    d_cache = ()
    if draft_cfg is not None:
        _, d_cache = prefill(draft_params, draft_weights, draft_cfg, tokens, pad, S)
        draft_weights = widened(draft_weights, draft_cfg.compute_dtype)

    def draft_pick(logits, key):                        # (B, V) -> token, its distribution
        logits = mask_vocab(logits, cfg.n_real_vocab)
        if greedy:
            return first_argmax(logits), None
        w = warp(logits, **filters)
        return first_argmax(w + jax.random.gumbel(key, w.shape)), jax.nn.softmax(w, axis=-1)

    def body(carry):
        cache, d_cache, seq, n, done, key, steps, accepted = carry
        key, k_prop, k_acc = jax.random.split(key, 3)
        active = ~done & (n < N)
        cur = P + n                                     # (B,) tokens held; the last not cached
        if draft_cfg is None:
            proposed, n_prop = propose_lookup(seq, cur, pad, K, ngram, eos_id)
            q = None
        else:
            proposed, q, d_cache = propose_draft(draft_weights, draft_cfg, d_cache, seq, cur,
                                                 pad, K, k_prop, draft_pick)
            n_prop = jnp.full((B,), K, jnp.int32)
        last = jnp.take_along_axis(seq, cur[:, None] - 1, axis=1)
        logits, cache = extend_step(weights, cfg, jnp.concatenate([last, proposed], axis=1),
                                    cur - 1, pad, cache)                  # (B, K+1, V)
        logits = mask_vocab(logits, cfg.n_real_vocab)
        if greedy:
            new, m = accept_greedy(logits, proposed, n_prop)
        else:
            new, m = accept_sampled(warp(logits, **filters), q, proposed, n_prop, k_acc)
        # keep m + 1 tokens, fewer where eos_id or a stop string comes first or max_new_tokens
        # is reached (seq past a row's count is rewritten by its next step)
        seq = jax.vmap(lambda r, x, i: jax.lax.dynamic_update_slice(r, x, (i,)))(seq, new, cur)
        j = jnp.arange(K + 1)[None, :]
        at_eos = ((new == eos_id) | stops_at(seq, cur[:, None] + j)) & (j <= m[:, None])
        count = jnp.min(jnp.where(at_eos, j + 1, m[:, None] + 1), axis=1)
        count = jnp.where(active, jnp.minimum(count, N - n), 0)
        done |= active & jnp.any(at_eos & (j < count[:, None]), axis=1)
        return (cache, d_cache, seq, n + count, done, key, steps + active,
                accepted + jnp.maximum(count - 1, 0))

    cond = lambda carry: jnp.any(~carry[4] & (carry[3] < N))
    zeros = jnp.zeros((B,), jnp.int32)
    carry = (cache, d_cache, seq, n, done, key, zeros, zeros)
    _, _, seq, n, _, _, steps, accepted = jax.lax.while_loop(cond, body, carry)
    out = jnp.where(jnp.arange(N)[None, :] < n[:, None], seq[:, P:P + N], pad_id)
    return out, steps, accepted, n


SPECULATOR = CountedJit(speculative_tokens, SPEC_STATIC)   # the one generate() uses
# The draft's decode weights, kept while its params live and checked against its config once
# per params (a Decoder's weights cache; its own program is never compiled).
DRAFTS = Decoder()


def run_speculative(args, static: dict, spec: Speculation) -> tuple[jax.Array, Stats]:
    """generate()'s speculative decode: args and static as generate_args made them (the
    target's weights laid out, prompts padded and placed), spec the checked settings.
    Returns (int32 (B, N) tokens, Stats)."""
    cfg, N = static["cfg"], static["max_new_tokens"]
    B, P = np.shape(args.tokens)
    check_memory(cfg, B, P, N + spec.k + 1)
    extra = {}
    if spec.draft_cfg is not None:
        dc = spec.draft_cfg
        longest = P - int(np.min(np.asarray(args.pad)))
        if longest + N > dc.block_size:
            raise UserError(f"the draft's block_size {dc.block_size} is shorter than prompt "
                            f"{longest} + max_new_tokens {N}: use a draft of the target's "
                            f"block_size or ask for fewer tokens")
        check_memory(dc, B, P, N + spec.k + 1)
        extra = dict(draft_params=spec.draft_params,
                     draft_weights=DRAFTS.weights(spec.draft_params, dc))
    out, steps, accepted, made = SPECULATOR.run(
        args.params, args.weights, args.tokens, args.pad, args.key, args.temperature,
        args.top_k, args.top_p, args.eos_id, args.values.pad_id, **extra,
        stop=args.values.stop, stop_in_prompt=args.values.stop_in_prompt, cfg=cfg,
        max_new_tokens=N, greedy=static["greedy"], use_top_k=static["use_top_k"],
        use_top_p=static["use_top_p"], k=spec.k, ngram=spec.ngram, draft_cfg=spec.draft_cfg,
        stop_window=static["plan"].stop_window)
    return out, Stats(np.asarray(steps), np.asarray(accepted), np.asarray(made))
