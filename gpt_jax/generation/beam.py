"""Beam search: transformers' `_beam_search` (v5) as one compiled loop over the KV cache.

Per prompt, num_beams running beams are extended every step: from the num_beams x V scored
continuations the best K = 2 * num_beams are kept (so that num_beams of them are still running
after any that end in EOS); those that end (EOS, or the last step) may enter the num_beams
finished hypotheses, scored sum(log p) / generated_length ** length_penalty; the best
num_beams that did not end run on. The search stops as transformers' does: when no running
beam can beat the worst finished one (early_stopping False: judged at the current length;
"never": at the longest length when length_penalty > 0), or, with early_stopping True, as soon
as num_beams hypotheses have finished. The float32 arithmetic follows transformers' step for
step (its -1e9 markers included), so the same logits pick the same beams.

The prompts are prefilled once (B rows, as generation.py does), their cache repeated for the
beams; the loop is a lax.while_loop over decode.decode_step on B * num_beams rows, which
reorders the (heads-major) cache on device after each step by gathering the rows of the beams
that survive. The loop ends as soon as every prompt's search is over (early exit). Compiled
once per (batch, bucketed prompt length, max_new_tokens, num_beams, num_return_sequences,
weights format); length_penalty, early_stopping and eos_id are runtime values.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import gpt_jax.generation.memory as memory
from gpt_jax.errors import UserError
from gpt_jax.generation.checks import (check_decode_weights, check_eos_id,
                                       check_max_new_tokens, check_prompts)
from gpt_jax.generation.loop import DECODER
from gpt_jax.generation.prompts import batch_size, bucket_length, pad_rows
from gpt_jax.generation.step import CountedJit, decode_mask, decode_step, prefill, widened
from gpt_jax.model.checks import check_causal, check_finite, check_positive_int
from gpt_jax.model.config import GPTConfig

NEG = -1.0e9  # transformers' marker for a candidate that may not be chosen (added, not set)


# -- settings ----------------------------------------------------------------------------------

def requested(num_beams, length_penalty, early_stopping, num_return_sequences) -> bool:
    """Whether generate()'s beam arguments ask for anything but its plain decoding (any value
    other than the defaults 1, 1.0, False, 1: bad ones too, so that beam checks refuse them)."""
    def is_(x, v):   # a number (numpy's too, bools not) equal to v
        return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_)) and x == v
    return not (is_(num_beams, 1) and is_(num_return_sequences, 1) and
                is_(length_penalty, 1.0) and early_stopping is False)


def check_beam_settings(num_beams, length_penalty, early_stopping, num_return_sequences):
    """(num_beams, length_penalty, early_stopping, num_return_sequences) in canonical form, or a
    one-line UserError saying what to pass."""
    nb = check_positive_int(num_beams, "num_beams", " (1: no beam search)")
    nr = check_positive_int(num_return_sequences, "num_return_sequences")
    if nr > nb:
        raise UserError(f"num_return_sequences ({nr}) must be at most num_beams ({nb}): beam "
                        f"search keeps num_beams hypotheses; raise num_beams")
    if isinstance(length_penalty, (bool, np.bool_)) or \
            not isinstance(length_penalty, numbers.Real) or not math.isfinite(length_penalty):
        raise UserError(f"length_penalty must be a finite number (> 0 favours longer "
                        f"sequences, < 0 shorter), got {length_penalty!r}")
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise UserError(f"early_stopping must be True, False or \"never\" (as in transformers), "
                        f"got {early_stopping!r}")
    return nb, float(length_penalty), early_stopping, nr


def length_tables(length_penalty: float, early_stopping, max_new_tokens: int):
    """float32 (N,) divisors, as transformers computes them (a Python float, then float32):
    finish[t], by which a hypothesis ending at step t (t + 1 new tokens) is scored, and
    bound[t], by which the early-stop test after step t divides the best running score."""
    N = max_new_tokens
    try:
        finish = [float((t + 1) ** length_penalty) for t in range(N)]
        longest = float(N ** length_penalty)
    except OverflowError:
        finish = longest = None
    if finish is None or not all(np.isfinite(np.float32([*finish, longest]))) or \
            min(finish + [longest]) == 0:
        raise UserError(f"length_penalty {length_penalty} is too large in magnitude for "
                        f"{N} new tokens (length ** length_penalty leaves float32): use a "
                        f"smaller one")
    bound = [longest] * N if early_stopping == "never" and length_penalty > 0 else finish
    return np.float32(finish), np.float32(bound)


# -- the search --------------------------------------------------------------------------------

STATIC = ("cfg", "max_new_tokens", "num_beams", "num_return")


class Beams(NamedTuple):
    """The search's state, per prompt b and beam j (transformers' names in brackets)."""
    run_tok: jax.Array     # (B, nb, N) new tokens of the running beams [running_sequences]
    run_score: jax.Array   # (B, nb) their sum of log p, best first [running_beam_scores]
    fin_tok: jax.Array     # (B, nb, N) the finished hypotheses [sequences]
    fin_score: jax.Array   # (B, nb) their length-penalised scores, best first [beam_scores]
    fin_flag: jax.Array    # (B, nb) bool: slot holds a finished hypothesis [is_sent_finished]
    open: jax.Array        # (B,) bool: may still improve [is_early_stop_heuristic_unsatisfied]


def _gather(x, idx):
    """x (B, M, ...) at idx (B, K) along axis 1 -> (B, K, ...) (transformers' _gather_beams)."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _top_k(x, k: int, gaps=slice(None)):
    """lax.top_k(x, k), and per row the smallest gap between adjacent ranks among `gaps` of the
    k + 1 best (ranks i, i+1 for i in gaps), between real scores only (not -1e9-marked)."""
    # The barrier keeps XLA from folding the slices below into the top_k's sort: a sort read
    # other than from index 0 is not rewritten into XLA:CPU's TopK, and a full stable sort of
    # nb * V scores cost 54 ms a step at gpt2 (TopK: 0.3 ms).
    v, i = jax.lax.optimization_barrier(jax.lax.top_k(x, k + 1))
    real = v > NEG / 10
    gap = jnp.where(real[:, 1:] & real[:, :-1], v[:, :-1] - v[:, 1:], jnp.inf)[:, gaps]
    return v[:, :k], i[:, :k], jnp.min(gap, axis=1)


def _select(s: Beams, logp, t, eos_id, finish, bound, stop_when_full):
    """One step of transformers' _beam_search (c. to g.): logp (B, nb, V) the running beams'
    next-token log-probs. Returns (new state, (B, nb) the beam each new running beam extends,
    whether any prompt's search goes on, (B,) the smallest score gap a choice here turned on).

    That gap is how close the step came to another answer: transformers' float32 logits differ
    from ours by rounding, so the two agree where it is well above that (tests read it)."""
    B, nb, V = logp.shape
    N = s.run_tok.shape[-1]
    K = 2 * nb
    acc = (logp + s.run_score[:, :, None]).reshape(B, nb * V)
    # which K continue (rank K-1 vs K) and which of them may finish (nb-1 vs nb)
    vals, flat, gap_k = _top_k(acc, K, jnp.array([nb - 1, K - 1]))      # (B, K), best first
    src, tok = flat // V, flat % V
    cand = _gather(s.run_tok, src)                               # (B, K, N)
    cand = jnp.where(jnp.arange(N) == t, tok[..., None], cand)
    hits = (tok == eos_id) | (t == N - 1)                        # EOS or max length

    # e. The best nb candidates that did not end run on.
    run_score, keep, gap_run = _top_k(vals + hits.astype(jnp.float32) * NEG, nb, slice(-1, None))
    run_tok, from_beam = _gather(cand, keep), _gather(src, keep)

    # f. Candidates among the top nb that ended may enter the finished hypotheses.
    just = hits & (jnp.arange(K) < nb)
    score = vals / finish[t]
    full = jnp.all(s.fin_flag, axis=-1, keepdims=True) & stop_when_full
    score = score + full.astype(jnp.float32) * NEG
    score = score + (~s.open[:, None]).astype(jnp.float32) * NEG
    score = score + (~just).astype(jnp.float32) * NEG
    fin_score, pick, gap_fin = _top_k(jnp.concatenate([s.fin_score, score], axis=1), nb)
    fin_tok = _gather(jnp.concatenate([s.fin_tok, cand], axis=1), pick)
    fin_flag = _gather(jnp.concatenate([s.fin_flag, just], axis=1), pick)

    # g. Can any running beam still beat the worst finished hypothesis?
    best = run_score[:, :1] / bound[t]
    worst = jnp.where(fin_flag, jnp.min(fin_score, axis=1, keepdims=True), NEG)
    still = s.open & jnp.any(best > worst, axis=-1)
    go_on = jnp.any(still) & ~(jnp.all(fin_flag) & stop_when_full) & ~jnp.all(hits)
    judged = s.open & jnp.all(fin_flag, axis=1)            # the test above can turn here
    gap_open = jnp.where(judged, jnp.abs(best[:, 0] - jnp.min(fin_score, axis=1)), jnp.inf)
    gap = jnp.minimum(jnp.minimum(gap_k, gap_run), jnp.minimum(gap_fin, gap_open))
    return Beams(run_tok, run_score, fin_tok, fin_score, fin_flag, still), from_beam, go_on, gap


def beam_tokens(params, weights, tokens, pad, eos_id, finish, bound, stop_when_full, *,
                cfg: GPTConfig, max_new_tokens: int, num_beams: int, num_return: int):
    """The pure function beam_search() compiles: (int32 (B * num_return, N) new tokens, the
    best first for each prompt, ending in eos_id repeated where a hypothesis finished early;
    float32 (B * num_return,) their scores; int32 () the steps run; float32 (B,) per prompt the
    smallest score gap any of its choices turned on, see _select).

    params and weights = decode_weights(params) as for generation.decode_tokens; tokens (B, P)
    left-padded prompts, pad (B,); eos_id int32 (-1: none); finish, bound float32 (N,) from
    length_tables; stop_when_full bool (early_stopping is True)."""
    B, P = tokens.shape
    N, nb, H = max_new_tokens, num_beams, cfg.n_head
    S = P + N - 1
    V = cfg.n_real_vocab                   # transformers' vocabulary: the padded ids dropped
    log_probs = lambda logits: jax.nn.log_softmax(logits[..., :V].astype(jnp.float32), axis=-1)

    # Prefill the B prompts once; every beam of a prompt starts from its cache.
    logits, cache = prefill(params, weights, cfg, tokens, pad, S, copies=nb)  # (B*nb*H, S, D)
    weights = widened(weights, cfg.compute_dtype)    # B * nb rows: wide products are faster
    pad = jnp.repeat(pad, nb)                                                 # (B*nb,)

    fill = jnp.where(eos_id >= 0, eos_id, 0).astype(jnp.int32)
    tok0 = jnp.full((B, nb, N), fill, jnp.int32)
    # Only beam 0 is live at first (the others score -1e9): the same prompt nb times over.
    run0 = jnp.zeros((B, nb), jnp.float32).at[:, 1:].set(NEG)
    s = Beams(tok0, run0, tok0, jnp.full((B, nb), NEG, jnp.float32),
              jnp.zeros((B, nb), bool), jnp.ones((B,), bool))
    logp = jnp.broadcast_to(log_probs(logits[:, 0])[:, None], (B, nb, V))
    s, from_beam, go_on, gap = _select(s, logp, 0, eos_id, finish, bound, stop_when_full)

    def reorder(cache, from_beam):         # the surviving beams' rows, gathered on device
        rows = (jnp.arange(B)[:, None] * nb + from_beam).reshape(-1)          # (B*nb,)
        return tuple(tuple(a.reshape(B * nb, H, *a.shape[1:])[rows].reshape(a.shape)
                           for a in kv) for kv in cache)

    def step(carry):                       # feed token t - 1 (at index P + t - 1), select t
        s, cache, t, _, gap = carry
        index = P + t - 1
        tok = jax.lax.dynamic_index_in_dim(s.run_tok, t - 1, axis=2, keepdims=False)
        logits, cache = decode_step(weights, cfg, tok.reshape(-1), index - pad,
                                    decode_mask(pad, index[None], S)[:, 0, 0], cache, index)
        # a prompt whose search is over (closed, or full with early_stopping True) no longer
        # decides anything that reaches its answer
        deciding = s.open & ~(jnp.all(s.fin_flag, axis=1) & stop_when_full)
        s, from_beam, go_on, new_gap = _select(s, log_probs(logits).reshape(B, nb, V), t,
                                               eos_id, finish, bound, stop_when_full)
        gap = jnp.where(deciding, jnp.minimum(gap, new_gap), gap)
        return s, reorder(cache, from_beam), t + 1, go_on, gap

    s, _, steps, _, gap = jax.lax.while_loop(
        lambda c: c[3] & (c[2] < N), step,
        (s, reorder(cache, from_beam), jnp.int32(1), go_on, gap))
    out = s.fin_tok[:, :num_return].reshape(B * num_return, N)
    return out, s.fin_score[:, :num_return].reshape(-1), steps, gap


BEAMS = CountedJit(beam_tokens, STATIC)   # beam_tokens jitted, its traces counted


# -- the public entry points -------------------------------------------------------------------

def beam_args(params, cfg: GPTConfig, prompts, max_new_tokens: int, *, num_beams: int = 4,
              length_penalty: float = 1.0, early_stopping=False,
              num_return_sequences: int = 1, eos_id: Optional[int] = None,
              weights: Optional[str] = None) -> tuple[tuple, dict]:
    """(args, static) so that beam_search(...) is BEAMS.run(*args, **static): every input
    checked on the host first (one UserError line), nothing compiled or allocated before."""
    if not isinstance(cfg, GPTConfig):
        raise UserError(f"cfg must be a gpt_jax.GPTConfig, got {type(cfg).__name__}")
    check_causal(cfg, "beam search (a KV cache)")
    check_finite(params)                      # NaN/inf weights decode to one token repeated
    nb, lp, early, nr = check_beam_settings(num_beams, length_penalty, early_stopping,
                                            num_return_sequences)
    N = check_max_new_tokens(max_new_tokens, cfg)
    eos = check_eos_id(eos_id, cfg)
    fmt = check_decode_weights(weights)
    finish, bound = length_tables(lp, early, N)
    n = batch_size(prompts)
    memory.check_memory(cfg, n and n * nb, bucket_length(1, cfg.block_size), N, num_beams=nb)
    rows = check_prompts(prompts, cfg, N)
    P = bucket_length(max(len(r) for r in rows), cfg.block_size)
    memory.check_memory(cfg, len(rows) * nb, P, N, num_beams=nb)
    tokens, pad = pad_rows(rows, cfg)
    laid = DECODER.weights(params, cfg, fmt)   # shared with generate()'s cache
    args = (params, laid, tokens, pad, np.int32(-1 if eos is None else eos), finish, bound,
            np.bool_(early is True))
    return args, dict(cfg=cfg, max_new_tokens=N, num_beams=nb, num_return=nr)


def beam_search(params, cfg: GPTConfig, prompts, max_new_tokens: int = 64, *,
                num_beams: int = 4, length_penalty: float = 1.0, early_stopping=False,
                num_return_sequences: int = 1, eos_id: Optional[int] = None,
                weights: Optional[str] = None):
    """Beam search as transformers' generate(num_beams=..., do_sample=False), in one compiled
    while_loop per (batch, bucketed prompt length, max_new_tokens, num_beams,
    num_return_sequences, weights).

    Args:
      params, cfg, prompts, max_new_tokens, eos_id, weights: as generate().
      num_beams: beams per prompt (>= 1).
      length_penalty: finite; a hypothesis scores sum log p / new_length ** length_penalty.
      early_stopping: True (stop once num_beams hypotheses finished), False (stop when the
        best running beam, at its current length, cannot beat the worst finished one),
        "never" (the same test at the longest length when length_penalty > 0).
      num_return_sequences: how many of each prompt's best hypotheses to return
        (<= num_beams).

    Returns:
      (tokens int32 (B * num_return_sequences, max_new_tokens), scores float32
      (B * num_return_sequences,)): prompt b's hypotheses are rows b * num_return_sequences
      ..., best first; one that ended in eos_id is padded with eos_id (transformers pads with
      pad_token_id, which GPT-2 sets to its eos); scores are transformers' sequences_scores.

    Raises:
      UserError: as generate(), before anything is compiled; DecodeMemoryError when the
        beams' cache would not fit.
    """
    args, static = beam_args(params, cfg, prompts, max_new_tokens, num_beams=num_beams,
                             length_penalty=length_penalty, early_stopping=early_stopping,
                             num_return_sequences=num_return_sequences, eos_id=eos_id,
                             weights=weights)
    tokens, scores, _, _ = BEAMS.run(*args, **static)
    return tokens, scores


def generate_beams(params, cfg: GPTConfig, prompts, max_new_tokens: int, g):
    """generate() with beam arguments (g: its GenerationConfig): beam_search's tokens, after
    refusing what beam search does not do (it does not sample: temperature must be 0, top_k
    and top_p unset; no logits processors, stop strings, log-probs or logits)."""
    nb, _, _, _ = check_beam_settings(g.num_beams, g.length_penalty, g.early_stopping,
                                      g.num_return_sequences)
    if nb == 1:
        raise UserError("length_penalty, early_stopping and num_return_sequences apply to "
                        "beam search: pass num_beams > 1 (or leave them at their defaults)")
    if not (g.temperature == 0 and g.top_k is None and g.top_p is None and g.min_p is None):
        raise UserError(f"num_beams={nb} is beam search, which does not sample: pass "
                        f"temperature=0 and no top_k / top_p / min_p (beam sampling is not "
                        f"supported)")
    unsupported = [name for name, on in (
        ("repetition_penalty", g.repetition_penalty not in (None, 1, 1.0)),
        ("no_repeat_ngram_size", g.no_repeat_ngram_size != 0),
        ("min_new_tokens", g.min_new_tokens != 0), ("stop", bool(g.stop)),
        ("pad_id", g.pad_id is not None), ("logprobs", g.logprobs is not False),
        ("return_logits", g.return_logits is not False)) if on]
    if unsupported:
        raise UserError(f"{', '.join(unsupported)} {'is' if len(unsupported) == 1 else 'are'} "
                        f"not supported with num_beams > 1: beam "
                        f"search takes eos_id, weights, length_penalty, early_stopping and "
                        f"num_return_sequences")
    return beam_search(params, cfg, prompts, max_new_tokens, num_beams=nb,
                       length_penalty=g.length_penalty, early_stopping=g.early_stopping,
                       num_return_sequences=g.num_return_sequences, eos_id=g.eos_id,
                       weights=g.weights)[0]
