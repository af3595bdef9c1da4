"""Logits processors equal to transformers', and GenerationConfig, the settings that carry them.

Each step the decode loop turns the model's float32 (B, V) logits into a token in transformers'
order: the processors (repetition penalty, no-repeat n-grams, min_new_tokens), then, when
sampling, the warpers (temperature, top-k, top-p: gpt_jax.sampling; then min-p), then the draw
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

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

import jax
import jax.numpy as jnp

from gpt_jax import stopping
from gpt_jax.errors import UserError
from gpt_jax.sampling import sample_logits


@dataclass(frozen=True)
class GenerationConfig:
    """How generate() picks tokens (transformers' GenerationConfig names where they exist).

    temperature >= 0 (0: greedy); top_k int >= 1; top_p in (0, 1]; min_p in [0, 1] (keep the
    tokens at least min_p times as likely as the most likely; sampling only);
    repetition_penalty > 0 (1: off; > 1 makes every id the row holds, prompt included, less
    likely: positive logits divided by it, negative ones multiplied); no_repeat_ngram_size
    n >= 0 (0: off; a row never repeats an n-gram it holds); min_new_tokens >= 0 (eos_id is
    impossible before that many new tokens); eos_id: a row that emits it stops; stop: strings
    that stop a row when its decoded text ends in one (gpt_jax.stopping; the prompt counts
    unless stop_in_prompt is False); pad_id: what a stopped row holds afterwards (default
    eos_id, or -1 without one); logprobs: also return each token's log-probability under the
    model (before any processor or temperature); return_logits: also return the logits each
    token was drawn from; weights: the decode loop's weight storage (decode.WEIGHT_FORMATS);
    num_beams, length_penalty, early_stopping, num_return_sequences: beam search as
    transformers' (gpt_jax.beam; with temperature=0, eos_id and weights only)."""
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    eos_id: Optional[int] = None
    stop: tuple = ()
    stop_in_prompt: bool = True
    pad_id: Optional[int] = None
    logprobs: bool = False
    return_logits: bool = False
    weights: Optional[str] = None
    num_beams: int = 1                 # > 1: beam search (gpt_jax.beam), greedy only
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False   # True, False or "never", as transformers'
    num_return_sequences: int = 1

    def replace(self, **changes) -> "GenerationConfig":
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(GenerationConfig))


def settings_of(config: Optional[GenerationConfig], kwargs: dict) -> GenerationConfig:
    """The GenerationConfig of a generate() call: `config` (default GenerationConfig()) with
    the keyword arguments given on top; an unknown keyword is a UserError."""
    unknown = sorted(set(kwargs) - set(FIELDS))
    if unknown:
        raise UserError(f"generate() got unknown setting(s) {', '.join(unknown)}; the settings "
                        f"are {', '.join(FIELDS)}")
    if config is not None and not isinstance(config, GenerationConfig):
        raise UserError(f"config must be a gpt_jax.GenerationConfig, got "
                        f"{type(config).__name__}")
    return (config or GenerationConfig()).replace(**kwargs)


def check_processors(g: GenerationConfig, max_new_tokens: int) -> dict:
    """The processor settings as Python numbers (None: off), or a one-line UserError."""
    from gpt_jax.checks import _scalar
    out = {}
    r = None if g.repetition_penalty is None else _scalar(g.repetition_penalty, integer=False)
    if g.repetition_penalty is not None and (r is None or not 0 < r < float("inf")):
        raise UserError(f"repetition_penalty must be a positive number (1 is off, > 1 "
                        f"discourages repeats), got {g.repetition_penalty!r}")
    out["repetition_penalty"] = None if r in (None, 1.0) else r
    n = _scalar(g.no_repeat_ngram_size, integer=True)
    if n is None or n < 0:
        raise UserError(f"no_repeat_ngram_size must be an integer >= 0 (0 is off), got "
                        f"{g.no_repeat_ngram_size!r}")
    out["no_repeat_ngram_size"] = n
    m = _scalar(g.min_new_tokens, integer=True)
    if m is None or m < 0:
        raise UserError(f"min_new_tokens must be an integer >= 0, got {g.min_new_tokens!r}")
    if m > max_new_tokens:
        raise UserError(f"min_new_tokens {m} exceeds max_new_tokens {max_new_tokens}: ask for "
                        f"at most {max_new_tokens}")
    out["min_new_tokens"] = m
    p = None if g.min_p is None else _scalar(g.min_p, integer=False)
    if g.min_p is not None and (p is None or not 0 <= p <= 1):
        raise UserError(f"min_p must be a number in [0, 1] (or None for no min-p), got "
                        f"{g.min_p!r}")
    out["min_p"] = p or None
    for name in ("stop_in_prompt", "logprobs", "return_logits"):
        if not isinstance(getattr(g, name), bool):
            raise UserError(f"{name} must be True or False, got {getattr(g, name)!r}")
    return out


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

def init_state(plan: Plan, s: dict, tokens, pad, max_new_tokens: int, V: int) -> dict:
    """What the loop carries per row besides the cache: done (B,), and what the plan's
    processors read (seen, hist, the stop window tail). tokens (B, P) left-padded, pad (B,)."""
    B, P = tokens.shape
    st = {"done": jnp.zeros((B,), bool)}
    if plan.penalty:
        st["seen"] = initial_seen(tokens, pad, V)
    if plan.ngram:
        real = jnp.arange(P)[None, :] >= pad[:, None]
        st["hist"] = jnp.concatenate([jnp.where(real, tokens, V),
                                      jnp.full((B, max_new_tokens), V, tokens.dtype)], axis=1)
    if plan.stop_window:
        st["tail"] = stopping.initial_tail(tokens, pad, plan.stop_window, V,
                                           s["stop_in_prompt"])
    return st


def pick(plan: Plan, s: dict, logits, key, st: dict, made, *, P: int, pad, greedy: bool,
         use_top_k: bool, use_top_p: bool):
    """(token (B,), its log-probability (B,) or None, the new state): the token after `made`
    new ones (buffer index P + made), from the model's float32 (B, V) logits (padded ids -inf
    already). s: the runtime settings (temperature, top_k, top_p, eos_id, pad_id, ...).
    Rows already done get pad_id; a row is done once it emits eos_id or ends a stop string."""
    x = logits
    if plan.penalty:
        x = repetition_penalty(x, st["seen"], s["penalty"])
    if plan.ngram:
        x = no_repeat_ngram(x, st["hist"], P + made, pad, plan.ngram)
    if plan.min_new:
        x = min_new_tokens(x, made, s["min_new"], s["eos_id"])
    tok = sample_logits(x, key, temperature=s["temperature"],
                        top_k=s["top_k"] if use_top_k else None,
                        top_p=s["top_p"] if use_top_p else None, greedy=greedy,
                        min_p=s["min_p"] if plan.min_p and not greedy else None)
    done = st["done"]
    tok = jnp.where(done, s["pad_id"], tok)
    lp = None
    if plan.logprobs:
        chosen = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1),
                                     jnp.clip(tok, 0, logits.shape[-1] - 1)[:, None], axis=-1)
        lp = jnp.where(done, 0.0, chosen[:, 0])
    new = dict(st)
    stopped = tok == s["eos_id"]
    if plan.penalty:
        new["seen"] = mark_seen(st["seen"], tok)
    if plan.ngram:
        new["hist"] = jax.lax.dynamic_update_slice_in_dim(st["hist"], tok[:, None], P + made, 1)
    if plan.stop_window:
        new["tail"] = stopping.push(st["tail"], jnp.where(done, logits.shape[-1], tok))
        stopped |= stopping.stop_matched(s["stop"], new["tail"])
    new["done"] = done | stopped
    return tok, lp, new
