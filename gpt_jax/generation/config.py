"""GenerationConfig: how generate() picks tokens, with transformers' names, and its checks."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Union

from gpt_jax.errors import UserError
from gpt_jax.model.checks import scalar


@dataclass(frozen=True)
class GenerationConfig:
    """How generate() picks tokens (transformers' GenerationConfig names where they exist).

    temperature >= 0 (0: greedy); top_k int >= 1; top_p in (0, 1]; min_p in [0, 1] (keep the
    tokens at least min_p times as likely as the most likely; sampling only);
    repetition_penalty > 0 (1: off; > 1 makes every id the row holds, prompt included, less
    likely: positive logits divided by it, negative ones multiplied); no_repeat_ngram_size
    n >= 0 (0: off; a row never repeats an n-gram it holds; any n longer than a row can get,
    prompt + max_new_tokens, bans nothing, as in transformers); min_new_tokens >= 0 (eos_id is
    impossible before that many new tokens); eos_id: a row that emits it stops; stop: strings
    that stop a row when its decoded text ends in one (gpt_jax.generation.stopping; the prompt counts
    unless stop_in_prompt is False); pad_id: what a stopped row holds afterwards (default
    eos_id, or -1 without one); logprobs: also return each token's log-probability under the
    model (before any processor or temperature); return_logits: also return the logits each
    token was drawn from; weights: the decode loop's weight storage (decode.WEIGHT_FORMATS);
    num_beams, length_penalty, early_stopping, num_return_sequences: beam search as
    transformers' (gpt_jax.generation.beam; with temperature=0, eos_id and weights only);
    prompt_lookup_num_tokens (with max_matching_ngram_size) or draft=(draft_params, draft_cfg)
    (with num_draft_tokens): speculative decoding (gpt_jax.generation.speculative; with the
    sampling settings, eos_id, pad_id and weights only)."""
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
    num_beams: int = 1                 # > 1: beam search (gpt_jax.generation.beam), greedy only
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False   # True, False or "never", as transformers'
    num_return_sequences: int = 1
    # speculative decoding (gpt_jax.generation.speculative): K proposals a step, verified by
    # one forward of the model; greedy output equals plain greedy's, sampling its distribution
    prompt_lookup_num_tokens: Optional[int] = None   # K, proposed by prompt lookup
    max_matching_ngram_size: Optional[int] = None    # its longest n-gram (default 2)
    draft: Optional[tuple] = dataclasses.field(default=None, compare=False, repr=False)
    num_draft_tokens: Optional[int] = None           # K, proposed by draft=(params, cfg)

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
    out = {}
    r = None if g.repetition_penalty is None else scalar(g.repetition_penalty, integer=False)
    if g.repetition_penalty is not None and (r is None or not 0 < r < float("inf")):
        raise UserError(f"repetition_penalty must be a positive number (1 is off, > 1 "
                        f"discourages repeats), got {g.repetition_penalty!r}")
    out["repetition_penalty"] = None if r in (None, 1.0) else r
    n = scalar(g.no_repeat_ngram_size, integer=True)
    if n is None or n < 0:
        raise UserError(f"no_repeat_ngram_size must be an integer >= 0 (0 is off), got "
                        f"{g.no_repeat_ngram_size!r}")
    out["no_repeat_ngram_size"] = n
    m = scalar(g.min_new_tokens, integer=True)
    if m is None or m < 0:
        raise UserError(f"min_new_tokens must be an integer >= 0, got {g.min_new_tokens!r}")
    if m > max_new_tokens:
        raise UserError(f"min_new_tokens {m} exceeds max_new_tokens {max_new_tokens}: ask for "
                        f"at most {max_new_tokens}")
    out["min_new_tokens"] = m
    p = None if g.min_p is None else scalar(g.min_p, integer=False)
    if g.min_p is not None and (p is None or not 0 <= p <= 1):
        raise UserError(f"min_p must be a number in [0, 1] (or None for no min-p), got "
                        f"{g.min_p!r}")
    out["min_p"] = p or None
    for name in ("stop_in_prompt", "logprobs", "return_logits"):
        if not isinstance(getattr(g, name), bool):
            raise UserError(f"{name} must be True or False, got {getattr(g, name)!r}")
    return out
