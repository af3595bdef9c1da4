"""gpt_jax: GPT-2 as pure JAX/Flax functions."""
import warnings

# `python -m gpt_jax.hf` runs a module this package has already imported (for from_hf/to_hf);
# runpy warns about that on stderr. It is harmless here (hf.py has no import-time state).
warnings.filterwarnings("ignore", message=r"'gpt_jax\.\w+' found in sys\.modules",
                        category=RuntimeWarning)

from gpt_jax.config import GPTConfig, PRESETS
from gpt_jax.errors import CheckpointError, ConfigError, DataError, UserError
from gpt_jax.model import GPT, Block, CausalSelfAttention, MLP, count_params, init_params, log_probs
from gpt_jax.tokenizer import get_tokenizer
from gpt_jax.checkpoint import load_checkpoint, save_checkpoint
from gpt_jax.hf import from_hf, to_hf

__version__ = "0.1.0"
