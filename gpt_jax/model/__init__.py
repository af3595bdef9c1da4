"""GPT-2 itself: the config and its presets, the Flax modules and GPT-2 init, the ops they run
on, the tied head fused with the loss, layer stacking, FLOPs, the tokenizer, the params checks
and the sharding rules.

    config.py     GPTConfig (one comment per field), PRESETS
    gpt.py        CausalSelfAttention, MLP, Block, GPT; init_params, count_params, param_shapes
    ops.py        Dense products XLA:CPU sends to its fast GEMM
    head_loss.py  the tied head fused with the cross-entropy (custom VJP)
    stacking.py   layers stacked for scan_layers, and back
    flops.py      FLOPs per token, peak FLOP/s, MFU
    tokenizer.py  GPT-2 BPE (tiktoken, local files)
    checks.py     params against a config, token ids, finite weights, plain numbers
    sharding.py   meshes, partition rules, jax.distributed start-up
"""
from gpt_jax.model.checks import check_finite, check_params, check_token_ids
from gpt_jax.model.config import PRESETS, GPTConfig
from gpt_jax.model.gpt import (GPT, MLP, Block, CausalSelfAttention, count_params, init_params,
                               param_shapes)
from gpt_jax.model.sharding import make_mesh
from gpt_jax.model.stacking import stack_layers, unstack_layers
from gpt_jax.model.tokenizer import EOT_ID, EOT_TOKEN, get_tokenizer

__all__ = ["EOT_ID", "EOT_TOKEN", "GPT", "MLP", "PRESETS", "Block", "CausalSelfAttention",
           "GPTConfig", "check_finite", "check_params", "check_token_ids", "count_params",
           "get_tokenizer", "init_params", "make_mesh", "param_shapes", "stack_layers",
           "unstack_layers"]
