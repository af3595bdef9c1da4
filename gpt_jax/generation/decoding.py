"""generate(): prompts in, new tokens out, through one compiled program per static shape.

That program prefills the whole prompt batch in one pass, then runs lax.scan over a KV cache.
The prompt batch is left-padded to a bucket length P (a power of two), so every row's last
prompt token sits at index P-1 and all rows write the cache at the same index each step.
Per-row positions (index - row padding) and an explicit mask (keys from the row's first real
token up to the query) make each row compute exactly what it would alone. The cache,
preallocated for P + max_new_tokens - 1 entries, is updated in place with dynamic_update_slice
inside the scan carry: no Python loop over tokens, no growing concatenation. The prefill
(decode.prefill) runs the model over caches of the prompt's own P entries and lays them out
heads-major, (B*H, S, D), zeros after P: the layout in which XLA reads them without a copy
per step.

Inputs are checked on the host first (gpt_jax.model.checks: types, ranges, lengths; and here an
estimate of the memory the decode needs), so bad input is one UserError line, never an error
from inside JAX or an out-of-memory kill.
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import gpt_jax.generation.beam as beam
import gpt_jax.generation.speculative as speculative
import gpt_jax.generation.stopping as stopping
from gpt_jax.errors import UserError
from gpt_jax.generation.checks import (check_decode_weights, check_eos_id, check_key,
                                       check_max_new_tokens, check_pad_id, check_prompts,
                                       check_sampling)
from gpt_jax.generation.config import GenerationConfig, check_processors, settings_of
from gpt_jax.generation.loop import DECODER
from gpt_jax.generation.memory import check_memory
from gpt_jax.generation.processors import Plan, Values
from gpt_jax.generation.prompts import batch_size, bucket_length, pad_rows
from gpt_jax.generation.sampling import first_argmax
from gpt_jax.generation.step import decode_mask
from gpt_jax.model.checks import check_causal, check_finite
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import GPT
from gpt_jax.model.sharding import batch_devices, batch_sharding, params_mesh
from gpt_jax.model.tokenizer import get_tokenizer


class DecodeArgs(NamedTuple):
    """The dynamic arguments of decode_tokens, checked and placed (see generate_args)."""
    params: dict
    weights: dict
    tokens: jax.Array | np.ndarray     # (B, P) left-padded prompts
    pad: jax.Array | np.ndarray        # (B,) padding per row
    key: jax.Array
    temperature: np.float32
    top_k: np.int32
    top_p: np.float32
    eos_id: np.int32
    values: Values                     # the processors' runtime values


# -- the public entry points -------------------------------------------------------------------

def generate(params, cfg: GPTConfig, prompts, max_new_tokens: int = 64, key=None, *,
             config: Optional[GenerationConfig] = None, **settings):
    """Continue each prompt by max_new_tokens tokens, through one compiled program per
    static shape (batch, bucketed prompt length, max_new_tokens, which settings are on); the
    settings' values are runtime arguments.

    Args:
      params, cfg: the model (params in GPT-2's layout, checked against cfg once per params).
      prompts: a list of prompts, each a list (or 1-D array) of int token ids, lengths may
        differ; or an int array (B, T). Ids are ints in [0, cfg.vocab_size): floats are
        refused, never rounded, and a flat list of ints is refused too ([[1, 2, 3]] is one
        prompt).
      max_new_tokens: N, new tokens per prompt (prompt + N must fit block_size).
      key: a jax PRNG key (default key(0)) or an int seed in [0, 2**32), the same as
        jax.random.key(seed); the same key gives the same sample.
      config: a GenerationConfig; **settings: any of its fields as keywords, on top of it:
        temperature >= 0 (0, or top_k=1, is greedy; inf samples uniformly among the tokens
        top_k keeps); top_k int >= 1; top_p in (0, 1]; min_p, repetition_penalty,
        no_repeat_ngram_size, min_new_tokens as transformers' (gpt_jax/generation/config.py);
        eos_id in [0, cfg.n_real_vocab) and stop strings: a row that emits eos_id or ends a
        stop string keeps that token and holds pad_id (default eos_id, or -1) after it, and
        the loop ends once every row is done; return_logits / logprobs: also return the
        logits each token was drawn from / its log p under the model; weights: how the
        decode loop stores the kernels and the tied head (None: cfg.dtype, "float32",
        "bfloat16", or "int8" with one float32 scale per output channel: fewer bytes per
        token, logits that differ by their rounding; the prefill reads the same weights);
        num_beams > 1 with length_penalty, early_stopping (True, False, "never") and
        num_return_sequences: beam search as transformers' (beam.beam_search; greedy only,
        temperature=0).

    Returns:
      int32 (B, N) new tokens (B * num_return_sequences rows with beams, each prompt's best
      first); with return_logits and/or logprobs a tuple: (tokens, float32 (B, N, V)
      logits, float32 (B, N) log-probs, 0 after a row stops), in that order.

    Raises:
      UserError, before anything is compiled or allocated: PromptTooLongError when prompt +
        max_new_tokens exceeds block_size; DecodeMemoryError when the KV cache and logits
        would not fit in the memory available (split the prompts into smaller calls);
        TokenError for ids that are not ints in range; a UserError naming any other bad
        setting, params that do not fit cfg or hold NaN/inf.
    """
    g = settings_of(config, settings)
    if speculative.requested(g):
        return generate_speculative(params, cfg, prompts, max_new_tokens, key, config=g)[0]
    if beam.requested(g.num_beams, g.length_penalty, g.early_stopping, g.num_return_sequences):
        return beam.generate_beams(params, cfg, prompts, max_new_tokens, g)
    args, static = generate_args(params, cfg, prompts, max_new_tokens, key=key, config=g)
    return DECODER.run(*args, **static)


def generate_speculative(params, cfg: GPTConfig, prompts, max_new_tokens: int = 64, key=None,
                         *, config: Optional[GenerationConfig] = None,
                         **settings) -> tuple[jax.Array, speculative.Stats]:
    """generate() with speculative decoding (prompt_lookup_num_tokens, or draft and
    num_draft_tokens), also returning how it went.

    Args:
      As generate(); the settings must ask for speculation.

    Returns:
      (int32 (B, N) tokens, speculative.Stats: per row the verify steps, the proposals
      accepted and the tokens made).

    Raises:
      UserError: as generate(); for speculative settings that are bad or go with settings the
        speculative loop does not run (processors, logprobs, logits, beams, streaming).
    """
    g = settings_of(config, settings)
    if not speculative.requested(g):
        raise UserError("generate_speculative() needs prompt_lookup_num_tokens or draft")
    if beam.requested(g.num_beams, g.length_penalty, g.early_stopping, g.num_return_sequences):
        raise UserError("speculative decoding (prompt_lookup_num_tokens / draft) and beam "
                        "search (num_beams ...) do not combine: pick one")
    plain = g.replace(prompt_lookup_num_tokens=None, max_matching_ngram_size=None, draft=None,
                      num_draft_tokens=None)
    args, static = generate_args(params, cfg, prompts, max_new_tokens, key=key, config=plain)
    spec = speculative.check_speculation(g, cfg, static["plan"], static["return_logits"])
    return speculative.run_speculative(args, static, spec)


def compile_generate(params, cfg: GPTConfig, prompts, max_new_tokens: int = 64, key=None, *,
                     config: Optional[GenerationConfig] = None,
                     **settings) -> tuple[Callable, DecodeArgs]:
    """generate() compiled ahead of time, for callers that time compilation apart from
    decoding, or decode several batches of one shape with one program.

    Args:
      As generate() (beam settings excepted).

    Returns:
      (fn, args): fn(*args) is what generate() with the same arguments returns; fn also takes
      the args that generate_args gives for other prompts, keys or sampling values of the
      same static shape. fn is a jax Compiled, or, where the loop can stop early (eos_id,
      stop strings), a loop.Programs: its start and rest programs (the rest compiled too, run
      only when a row still decodes after the first cache segment).

    Raises:
      UserError: as generate(), and for beam settings (beam search runs through generate()
        or beam_search()).
    """
    args, static = generate_args(params, cfg, prompts, max_new_tokens, key=key, config=config,
                                 **settings)
    return DECODER.compile(*args, **static), args


def generate_args(params, cfg: GPTConfig, prompts, max_new_tokens: int, *, key=None,
                  config: Optional[GenerationConfig] = None, _stream: bool = False,
                  **settings) -> tuple[DecodeArgs, dict]:
    """(args, static): generate()'s inputs checked, padded and placed, so that generate() is
    DECODER.run(*args, **static). Every check runs on the host, on Python and numpy values,
    before any device work."""
    if not isinstance(cfg, GPTConfig):
        raise UserError(f"cfg must be a gpt_jax.GPTConfig, got {type(cfg).__name__}")
    g = settings_of(config, settings)
    if beam.requested(g.num_beams, g.length_penalty, g.early_stopping, g.num_return_sequences):
        raise UserError("beam search runs through generate() or gpt_jax.beam_search(), not "
                        "compile_generate() or generate_stream(): leave num_beams, "
                        "length_penalty, early_stopping and num_return_sequences at their "
                        "defaults here")
    if speculative.requested(g):
        raise UserError("speculative decoding (prompt_lookup_num_tokens / draft) runs through "
                        "generate() or generate_speculative(), not compile_generate() or "
                        "generate_stream()")
    check_causal(cfg, "generate() (a KV cache)", "decode it with "
                 "gpt_jax.generation.decoding.generate_uncached, which recomputes the prefix per token")
    max_new_tokens = check_max_new_tokens(max_new_tokens, cfg)
    temperature, top_k, top_p = check_sampling(g.temperature, g.top_k, g.top_p)
    eos_id = check_eos_id(g.eos_id, cfg)
    proc = check_processors(g, max_new_tokens)
    stop = stopping.check_stop(g.stop)
    pad_id = check_pad_id(g.pad_id, eos_id, cfg)
    fmt = check_decode_weights(g.weights)
    return_logits = g.return_logits
    key = check_key(key)
    # A lower bound first (every prompt one token long), so an absurd batch is refused before
    # its rows are read; then the exact figure for the bucketed length.
    mesh = params_mesh(params)
    split = batch_devices(mesh)
    check_memory(cfg, batch_size(prompts), bucket_length(1, cfg.block_size), max_new_tokens,
                 return_logits, split=split)
    rows = check_prompts(prompts, cfg, max_new_tokens)
    longest = max(len(r) for r in rows)
    if proc["no_repeat_ngram_size"] > longest + max_new_tokens:
        # No row can ever hold an n-gram that long, so it bans nothing (transformers' too):
        # off, rather than an n-gram window longer than the token buffer it slides over.
        proc["no_repeat_ngram_size"] = 0
    P = bucket_length(longest, cfg.block_size)
    tables = None
    if stop:   # refused here when the tables alone would not fit (stopping.stop_tables)
        tables = stopping.stop_tables(stop, get_tokenizer(), cfg.vocab_size)
    check_memory(cfg, len(rows), P, max_new_tokens, return_logits, split=split, stop=tables)
    tokens, pad = pad_rows(rows, cfg)
    greedy = temperature == 0 or top_k == 1
    use_top_k = not greedy and top_k is not None and top_k < cfg.n_real_vocab
    use_top_p = not greedy and top_p is not None and top_p < 1
    check_finite(params)                      # NaN/inf weights decode to one token repeated
    laid = DECODER.weights(params, cfg, fmt)  # checks that params match cfg when it makes one
    if mesh is not None and len(rows) % split == 0:
        # Rows split over the mesh the params live on, so each device decodes its own rows;
        # rows that do not divide stay replicated.
        tokens = jax.device_put(tokens, batch_sharding(mesh, ndim=2, batch_axis=0))
        pad = jax.device_put(pad, batch_sharding(mesh, ndim=1, batch_axis=0))
    plan = Plan(penalty=proc["repetition_penalty"] is not None,
                ngram=proc["no_repeat_ngram_size"], min_new=proc["min_new_tokens"] > 0 and
                eos_id is not None, min_p=proc["min_p"] is not None and not greedy,
                stop_window=tables.window if tables is not None else 0,
                early_exit=eos_id is not None or bool(stop), logprobs=g.logprobs,
                stream=_stream)
    values = Values(
        pad_id=np.int32(pad_id),
        penalty=np.float32(proc["repetition_penalty"]) if plan.penalty else None,
        min_p=np.float32(proc["min_p"]) if plan.min_p else None,
        min_new=np.int32(proc["min_new_tokens"]) if plan.min_new else None,
        stop=tables, stop_in_prompt=np.bool_(g.stop_in_prompt) if tables is not None else None,
        stream_id=np.int32(0) if _stream else None)   # generate_stream sets its own
    args = DecodeArgs(params, laid, tokens, pad, key,
                      np.float32(temperature if not greedy else 1.0),
                      np.int32(top_k if use_top_k else 0),
                      np.float32(top_p if use_top_p else 1.0),
                      np.int32(-1 if eos_id is None else eos_id), values)
    static = dict(cfg=cfg, max_new_tokens=int(max_new_tokens), greedy=greedy,
                  use_top_k=use_top_k, use_top_p=use_top_p, return_logits=bool(return_logits),
                  plan=plan)
    return args, static


# -- the reference: no cache, a full forward pass per new token (for tests and bench.py) -------

@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens"))
def generate_uncached(params, tokens, pad, *, cfg: GPTConfig, max_new_tokens: int):
    """Greedy decoding that recomputes the whole (fixed-length, left-padded) sequence for every
    token: what the cache saves. tokens (B, P) and pad (B,) as from left_pad().
    A bidirectional model (cfg.causal false), which no cache can serve, decodes here: at each
    step every real token so far sees every other (keys pad <= k < P + i), as in training."""
    B, P = tokens.shape
    S = P + max_new_tokens - 1
    seq = jnp.zeros((B, S), jnp.int32).at[:, :P].set(tokens)
    idx = jnp.arange(S)
    positions = jnp.maximum(idx[None, :] - pad[:, None], 0)

    def step(seq, i):                        # position P - 1 + i predicts the token at P + i
        mask = decode_mask(pad, idx if cfg.causal else jnp.full((S,), P - 1 + i), S)
        logits = GPT(cfg).apply({"params": params}, seq, positions=positions, mask=mask,
                                logits_at=P - 1 + i)
        tok = first_argmax(logits[:, 0])  # the model's padded ids are -1e9 already
        seq = jax.lax.dynamic_update_slice(seq, tok[:, None], (0, jnp.minimum(P + i, S - 1)))
        return seq, tok

    _, toks = jax.lax.scan(step, seq, jnp.arange(max_new_tokens))
    return toks.T                            # (B, max_new_tokens)
