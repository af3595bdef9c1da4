"""gpt_jax: GPT-2 as pure JAX/Flax functions.

The public face: every name below is loaded from its sub-package on first use, so `import
gpt_jax` costs milliseconds and `python -m gpt_jax.hf` finds nothing imported early.

    model/       GPTConfig, GPT, init_params, the tokenizer      (gpt_jax.model)
    checkpoint/  save/load checkpoints, Hugging Face weights      (gpt_jax.checkpoint)
    data/        prepared token directories, corpora              (gpt_jax.data)
    generation/  generate, beams, streaming, processors           (gpt_jax.generation)
    evaluation/  scoring, tasks, the lm-eval model                (gpt_jax.evaluation)
    train/       TrainConfig, the train step, the trainer         (gpt_jax.train)
    lab/         analysis, study, benchmarks;  cli/  the commands
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_FACE = {
    "model.config": ("GPTConfig", "PRESETS"),
    "model.gpt": ("GPT", "Block", "CausalSelfAttention", "MLP", "count_params", "init_params"),
    "model.tokenizer": ("get_tokenizer",),
    "errors": ("UserError", "ConfigError", "CheckpointError", "DataError", "TokenError",
               "PromptTooLongError", "DecodeMemoryError", "ScoreMemoryError"),
    "checkpoint.manager": ("load_checkpoint", "save_checkpoint"),
    "checkpoint.hf": ("from_hf", "to_hf"),
    "checkpoint.load": ("load_model",),
    "generation.config": ("GenerationConfig",),
    "generation.decoding": ("generate", "compile_generate"),
    "generation.streaming": ("generate_stream", "Piece"),
    "generation.beam": ("beam_search",),
    "evaluation.scoring": ("log_probs", "loglikelihood", "token_logprobs"),
    "train.config": ("TrainConfig",),
}
_WHERE = {name: f"gpt_jax.{module}" for module, names in _FACE.items() for name in names}
_PACKAGES = ("model", "checkpoint", "data", "generation", "evaluation", "train", "lab", "cli",
             "utils", "errors")
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value            # later lookups skip this function
        return value
    if name in _PACKAGES:
        return importlib.import_module(f"gpt_jax.{name}")
    raise AttributeError(f"module 'gpt_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE) | set(_PACKAGES))


if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    # noqa: F401 (re-exports)
    from gpt_jax.checkpoint.hf import from_hf, to_hf
    from gpt_jax.checkpoint.load import load_model
    from gpt_jax.checkpoint.manager import load_checkpoint, save_checkpoint
    from gpt_jax.errors import (CheckpointError, ConfigError, DataError, DecodeMemoryError,
                                PromptTooLongError, ScoreMemoryError, TokenError, UserError)
    from gpt_jax.evaluation.scoring import log_probs, loglikelihood, token_logprobs
    from gpt_jax.generation.beam import beam_search
    from gpt_jax.generation.config import GenerationConfig
    from gpt_jax.generation.decoding import compile_generate, generate
    from gpt_jax.generation.streaming import Piece, generate_stream
    from gpt_jax.model.config import PRESETS, GPTConfig
    from gpt_jax.model.gpt import GPT, MLP, Block, CausalSelfAttention, count_params, init_params
    from gpt_jax.model.tokenizer import get_tokenizer
    from gpt_jax.train.config import TrainConfig
