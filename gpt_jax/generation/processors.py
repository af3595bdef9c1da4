"""Logits processors equal to transformers' (their settings: gpt_jax/generation/config.py).

Each step the decode loop turns the model's float32 (B, V) logits into a token in transformers'
order: the processors (repetition penalty, no-repeat n-grams, min_new_tokens), then, when
sampling, the warpers (temperature, top-k, top-p: gpt_jax.generation.sampling; then min-p), then the draw
or the argmax. Greedy decoding skips the warpers, as transformers' does (min_p, top_k, top_p
and temperature change nothing there). sampling.py runs top-k before temperature rather than
after: the same tokens survive for any temperature > 0, and temperature = inf stays uniform
over the top k.

The processors are pure functions over arrays the loop carries: `seen` (B, V) bool, the ids a
row has held (prompt included, padding not); `hist` (B, L) int32, each row's tokens at their
buffer index (the sentinel V before the row's first real token); they are jittable with traced
settings. Which are on is static (Plan), so a decode without them compiles to the loop it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

import gpt_jax.generation.stopping as stopping
from gpt_jax.generation.sampling import sample_logits


@dataclass(frozen=True)
class Plan:
    """What the decode loop does besides the model, fixed at compile time (hashable: jit's
    static argument). ngram: no_repeat_ngram_size (0 off); stop_window: tokens a stop string
    can span (0: no stop strings); early_exit: a while_loop that ends once every row has
    stopped (on with eos_id or stop strings); stream: call the host each step."""
    penalty: bool = False
    ngram: int = 0
    min_new: bool = False
    min_p: bool = False
    stop_window: int = 0
    early_exit: bool = False
    logprobs: bool = False
    stream: bool = False


class Values(NamedTuple):
    """The processors' runtime values, None where the plan leaves a processor off: traced, so
    new values reuse the compiled loop. The fields are in alphabetical order, so the decode
    program's arguments are in the order a dict of them had."""
    min_new: Any = None         # int32: no eos_id before this many new tokens
    min_p: Any = None           # float32: min-p filter
    pad_id: Any = None          # int32: what a done row holds (None: eos_id)
    penalty: Any = None         # float32: repetition penalty
    stop: Any = None            # stopping.StopTables: the stop strings' tables
    stop_in_prompt: Any = None  # bool: the prompt's text counts toward a stop string
    stream_id: Any = None       # int32: channel's stream of this decode


class Settings(NamedTuple):
    """Everything pick reads at run time: the sampling values and the processors' Values."""
    temperature: Any
    top_k: Any
    top_p: Any
    eos_id: Any                 # int32, -1: none
    pad_id: Any
    values: Values

    @classmethod
    def of(cls, temperature, top_k, top_p, eos_id, values: Optional[Values]) -> "Settings":
        values = values or Values()
        pad_id = eos_id if values.pad_id is None else values.pad_id
        return cls(temperature, top_k, top_p, eos_id, pad_id, values)


class RowState(NamedTuple):
    """What the loop carries per row besides the cache (fields in alphabetical order, as the
    dict it replaced: the loop's carry keeps its layout). done (B,) bool; seen (B, V) bool, the
    ids a row has held; hist (B, L) int32, its tokens by buffer index; tail, the stop window."""
    done: Any
    hist: Any = None
    seen: Any = None
    tail: Any = None


# -- the processors: float32 (B, V) logits in, (B, V) out; jittable, traced settings ---------

def repetition_penalty(logits, seen, penalty):
    """transformers' RepetitionPenaltyLogitsProcessor: every id the row has held (seen (B, V))
    gets its logit divided by penalty when positive, multiplied when negative."""
    hit = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(seen, hit, logits)


def no_repeat_ngram(logits, hist, index, start, n: int):
    """transformers' NoRepeatNGramLogitsProcessor: -inf for every id that would complete an
    n-gram the row already holds. hist (B, L) the rows' tokens by buffer index; index the
    buffer index of the token being chosen (a scalar); start (B,) each row's first real index.
    Rows shorter than n - 1 tokens ban nothing, as there."""
    B, L = hist.shape
    V = logits.shape[-1]
    J = L - n + 1                                   # n-gram starts j = 0 .. L - n
    prefix = jax.lax.dynamic_slice_in_dim(hist, index - (n - 1), n - 1, axis=1)   # (B, n-1)
    same = jnp.ones((B, J), bool)
    for t in range(n - 1):
        same &= hist[:, t:t + J] == prefix[:, t:t + 1]
    j = jnp.arange(J)[None, :]
    same &= (j >= start[:, None]) & (j + n - 1 < index)   # whole n-gram held, none of padding
    banned = jnp.where(same, hist[:, n - 1:n - 1 + J], V)  # (B, J): the id that completes it
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], banned.shape)
    return logits.at[rows, banned].set(-jnp.inf, mode="drop")


def min_new_tokens(logits, made, least, eos_id):
    """transformers' MinNewTokensLengthLogitsProcessor: eos_id is impossible while fewer than
    `least` new tokens have been made (made: a scalar, the tokens before this one)."""
    V = logits.shape[-1]
    ban = (made < least) & (eos_id >= 0)
    return jnp.where(ban & (jnp.arange(V) == eos_id), -jnp.inf, logits)


def mark_seen(seen, tokens):
    """seen (B, V) with each row's token (B,) added (ids outside [0, V) are dropped)."""
    return seen.at[jnp.arange(seen.shape[0]), tokens].set(True, mode="drop")


def initial_seen(tokens, pad, V: int):
    """(B, V) bool: the ids each left-padded prompt row (tokens (B, P), pad (B,)) holds."""
    B, P = tokens.shape
    real = jnp.arange(P)[None, :] >= pad[:, None]
    rows = jnp.broadcast_to(jnp.arange(B)[:, None], (B, P))
    return jnp.zeros((B, V), bool).at[rows, jnp.where(real, tokens, V)].set(True, mode="drop")


# -- one step of the loop: logits in, token out, the row state carried ---------------------------

def init_state(plan: Plan, s: Settings, tokens, pad, max_new_tokens: int, V: int) -> RowState:
    """What the loop carries per row besides the cache: done (B,), and what the plan's
    processors read (seen, hist, the stop window tail). tokens (B, P) left-padded, pad (B,)."""
    B, P = tokens.shape
    st = RowState(done=jnp.zeros((B,), bool))
    if plan.penalty:
        st = st._replace(seen=initial_seen(tokens, pad, V))
    if plan.ngram:
        real = jnp.arange(P)[None, :] >= pad[:, None]
        st = st._replace(hist=jnp.concatenate([jnp.where(real, tokens, V),
                                               jnp.full((B, max_new_tokens), V, tokens.dtype)],
                                              axis=1))
    if plan.stop_window:
        st = st._replace(tail=stopping.initial_tail(tokens, pad, plan.stop_window, V,
                                                    s.values.stop_in_prompt))
    return st


def pick(plan: Plan, s: Settings, logits, key, st: RowState, made, *, P: int, pad, greedy: bool,
         use_top_k: bool, use_top_p: bool):
    """(token (B,), its log-probability (B,) or None, the new state): the token after `made`
    new ones (buffer index P + made), from the model's float32 (B, V) logits (padded ids -inf
    already). s: the runtime settings (temperature, top_k, top_p, eos_id, pad_id, values).
    Rows already done get pad_id; a row is done once it emits eos_id or ends a stop string."""
    x = logits
    if plan.penalty:
        x = repetition_penalty(x, st.seen, s.values.penalty)
    if plan.ngram:
        x = no_repeat_ngram(x, st.hist, P + made, pad, plan.ngram)
    if plan.min_new:
        x = min_new_tokens(x, made, s.values.min_new, s.eos_id)
    tok = sample_logits(x, key, temperature=s.temperature,
                        top_k=s.top_k if use_top_k else None,
                        top_p=s.top_p if use_top_p else None, greedy=greedy,
                        min_p=s.values.min_p if plan.min_p and not greedy else None)
    done = st.done
    tok = jnp.where(done, s.pad_id, tok)
    lp = None
    if plan.logprobs:
        chosen = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                     jnp.clip(tok, 0, logits.shape[-1] - 1)[:, None], axis=-1)
        lp = jnp.where(done, 0.0, chosen[:, 0])
    new = st
    stopped = tok == s.eos_id
    if plan.penalty:
        new = new._replace(seen=mark_seen(st.seen, tok))
    if plan.ngram:
        new = new._replace(hist=jax.lax.dynamic_update_slice_in_dim(st.hist, tok[:, None],
                                                                    P + made, 1))
    if plan.stop_window:
        new = new._replace(tail=stopping.push(st.tail, jnp.where(done, logits.shape[-1], tok)))
        stopped |= stopping.stop_matched(s.values.stop, new.tail)
    return tok, lp, new._replace(done=done | stopped)
