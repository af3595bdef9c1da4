"""gpt_jax: GPT-2 as pure JAX/Flax functions."""
from gpt_jax.config import GPTConfig, PRESETS
from gpt_jax.errors import CheckpointError, ConfigError, DataError, UserError
from gpt_jax.model import GPT, Block, CausalSelfAttention, MLP, count_params, init_params
from gpt_jax.tokenizer import get_tokenizer
from gpt_jax.checkpoint import load_checkpoint, save_checkpoint
from gpt_jax.generation import compile_generate, generate
from gpt_jax.processors import GenerationConfig
from gpt_jax.streaming import generate_stream
from gpt_jax.beam import beam_search
from gpt_jax.scoring import log_probs, loglikelihood, token_logprobs

__version__ = "0.1.0"

_LAZY = {"from_hf": "gpt_jax.hf", "to_hf": "gpt_jax.hf"}


def __getattr__(name):
    # Imported on first use: `python -m gpt_jax.hf` must not find gpt_jax.hf already imported
    # (runpy warns), and plain users need not load safetensors / huggingface_hub.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpt_jax' has no attribute {name!r}")
