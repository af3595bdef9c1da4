"""GPTConfig: every hyperparameter of the architecture in one frozen dataclass, plus presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from gpt_jax.errors import ConfigError

# GPT-2's BPE has 50257 tokens. A larger vocab_size only pads the embedding for faster matmuls:
# ids >= TOKENIZER_VOCAB_SIZE get a -1e9 logit (model.PADDED_LOGIT), so they are never sampled
# and carry no probability mass in the loss; export drops their rows.
TOKENIZER_VOCAB_SIZE = 50257

ATTN_IMPLS = ("auto", "xla", "cudnn")
NORMS = ("pre", "post")
INITS = ("gpt2", "xavier")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def help_field(default, help: str):
    """A dataclass field that is also a train.py flag: its help text lives here, once."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class GPTConfig:
    """The architecture (and compute dtype) of a GPT. Params belong to the config they were
    made with: load_checkpoint and from_hf return the pair, and every entry point checks the
    params' shapes against cfg. Shapes do not show everything: cfg.replace(n_head=4) on
    2-head params splits the same kernels into other heads and silently computes another
    model. Change only dtype, dropout or attn_impl of a loaded config."""
    # 50257 is GPT-2's BPE; 50304 = 64 * 786 pads it for faster matmuls (padded ids: -1e9 logits)
    vocab_size: int = help_field(
        TOKENIZER_VOCAB_SIZE, "50257 (GPT-2), or padded up (e.g. 50304) for faster matmuls")
    # position embeddings are learned, one per position: no sequence may be longer
    block_size: int = help_field(
        1024, "context length in tokens (each sample is block_size + 1 tokens)")
    # GPT-2's four sizes have 12, 24, 36 and 48 blocks (PRESETS); compute grows with depth
    n_layer: int = help_field(12, "transformer blocks")
    # each head attends over its own head_dim = n_embd // n_head channels (64 in GPT-2)
    n_head: int = help_field(12, "attention heads")
    # the residual stream's width: parameters grow with its square
    n_embd: int = help_field(768, "model width (a multiple of n_head)")
    # regularises runs on little data; GPT-2 used 0.1, pre-training on plenty of data needs none
    dropout: float = help_field(0.0, "dropout rate, training only")
    # GPT-2 has biases in every Dense layer and LayerNorm (export needs them); without is
    # slightly faster
    bias: bool = help_field(True, "biases in Dense layers and LayerNorms")
    # bfloat16 matmuls run several times faster on GPUs and TPUs; the head and the LayerNorm
    # statistics stay float32 either way
    dtype: str = help_field(
        "float32", "compute dtype: float32 | bfloat16 (parameters and Adam state stay float32)")
    # what parameters are stored in: float32 keeps small Adam updates from rounding away
    param_dtype: str = "float32"
    # cuDNN's fused attention is fastest on a GPU but takes only 16-bit inputs: auto picks it
    # there (else XLA's); xla | cudnn force one
    attn_impl: str = "auto"
    # The three switches of the chapter's experiments (study.py); GPT-2's values are the
    # defaults, and only GPT-2 exports to Hugging Face. Pre-LN normalises each branch's input
    # (x + f(ln(x))), Post-LN the residual sum (ln(x + f(x)), the 2017 Transformer and BERT).
    norm: str = help_field("pre", "pre (GPT-2: x + f(ln(x))) | post (ln(x + f(x)), BERT's)")
    # tied: the head is wte read backwards; untied: a separate (V, C) lm_head, GPT-2-initialised
    tie_embeddings: bool = help_field(True, "LM head tied to the token embedding (GPT-2)")
    # false: every position sees the whole sequence (BERT's mask); such a model cannot decode
    # with a KV cache (generate refuses it; generation.generate_uncached recomputes)
    causal: bool = help_field(True, "causal attention mask (false: bidirectional, BERT-style)")
    # Post-LN as Vaswani et al. 2017 and Xiong et al. 2020 ran it: Xavier-initialised Dense
    # kernels without GPT-2's 1/sqrt(2L) down-scaling of the residual projections (that scaling
    # is itself a Post-LN stabiliser, as in Admin / DeepNorm), and no LayerNorm after the last
    # block (a Post-LN block already ends in one). Embeddings stay N(0, 0.02) under both inits.
    init: str = help_field("gpt2", "gpt2 (N(0, 0.02), residual projections / sqrt(2 n_layer)) "
                           "| xavier (Glorot-uniform Dense kernels, no residual scaling)")
    final_ln: bool = help_field(True, "LayerNorm ln_f before the head (GPT-2; false: none, as "
                                "in the 2017 Post-LN Transformer)")

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                              f"n_head ({self.n_head})")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.bias, bool):
            raise ConfigError(f"GPTConfig.bias must be true or false, got {self.bias!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ConfigError(f"GPTConfig.attn_impl must be one of {', '.join(ATTN_IMPLS)}, "
                              f"got {self.attn_impl!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"GPTConfig.norm must be one of {', '.join(NORMS)}, "
                              f"got {self.norm!r}")
        if self.init not in INITS:
            raise ConfigError(f"GPTConfig.init must be one of {', '.join(INITS)}, "
                              f"got {self.init!r}")
        for name in ("tie_embeddings", "causal", "final_ln"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"GPTConfig.{name} must be true or false, "
                                  f"got {getattr(self, name)!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"GPTConfig.{name} must be one of {', '.join(DTYPES)}, "
                                  f"got {getattr(self, name)!r}")

    # -- derived values -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_real_vocab(self) -> int:
        """Ids that may be predicted: the tokenizer's 50257 when vocab_size pads above it."""
        return min(self.vocab_size, TOKENIZER_VOCAB_SIZE)

    @property
    def compute_dtype(self):
        """The jnp dtype of matmuls and activations (the `dtype` field names it)."""
        return DTYPES[self.dtype]

    @property
    def storage_dtype(self):
        """The jnp dtype parameters are stored in (the `param_dtype` field names it)."""
        return DTYPES[self.param_dtype]

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(f"unknown GPTConfig field(s) {unknown}; allowed: {sorted(fields)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "GPTConfig":
        return dataclasses.replace(self, **changes)

    @property
    def is_gpt2(self) -> bool:
        """GPT-2's architecture: Pre-LN, tied head, causal mask, final ln_f (what Hugging Face's
        GPT-2 holds; to_hf refuses anything else). The init is not architecture: a model
        trained from init="xavier" is still GPT-2's function and exports."""
        return self.norm == "pre" and self.tie_embeddings and self.causal and self.final_ln

    def architecture_diff(self, other: "GPTConfig") -> list[str]:
        """Fields that change parameter shapes or the function, as 'name: self vs other'."""
        return [f"{k}: {getattr(self, k)} vs {getattr(other, k)}" for k in ARCHITECTURE_FIELDS
                if getattr(self, k) != getattr(other, k)]


# Fields that decide the parameter pytree or the function the weights were trained for;
# dropout and dtypes may differ between runs.
ARCHITECTURE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias",
                       "norm", "tie_embeddings", "causal", "final_ln")

PRESETS: dict[str, dict[str, Any]] = {
    # The four released GPT-2 sizes (124M, 355M, 774M, 1558M parameters with the tied head).
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
    # Small ones for tests and CPU demos.
    "gpt2-tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=128),
    "gpt2-mini": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
}
