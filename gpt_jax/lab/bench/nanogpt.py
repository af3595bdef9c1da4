"""A nanoGPT-shaped GPT-2 in PyTorch: the model a PyTorch user writes by hand and trains with
torch.compile and fused AdamW, as a train-step peer (gpt_jax/lab/bench/compiled.py).

Our own code, in the shape of karpathy/nanoGPT's model.py (read at commit 04a1d697): one
nn.Linear per projection holding q|k|v together, scaled_dot_product_attention(is_causal=True),
pre-LayerNorm blocks, the head tied to wte. Where nanoGPT differs from GPT-2 we follow GPT-2,
so that its logits equal Hugging Face's GPT2LMHeadModel on the same weights (the test says
so): GELU is the tanh approximation (GPT-2's gelu_new; nanoGPT uses the exact nn.GELU()), and
the vocabulary is GPT-2's 50257 (nanoGPT pads to 50304).

Importing this module imports torch: gpt_jax/lab/bench/compiled.py imports it only once it
knows torch is there (torch is optional for the package).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpt_jax.checkpoint.hf import LAYER_NORM_EPS, hf_tensors
from gpt_jax.model.config import GPTConfig


class Block(nn.Module):
    def __init__(self, C: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(C, eps=LAYER_NORM_EPS)
        self.ln_2 = nn.LayerNorm(C, eps=LAYER_NORM_EPS)
        self.c_attn, self.attn_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def forward(self, x):                                        # (B, T, C)
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        # (B, T, C) -> (B, H, T, D): heads become a batch dim for sdpa
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)          # (B, H, T, D)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class NanoGPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        V, C = cfg.n_real_vocab, cfg.n_embd
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(cfg.block_size, C)
        self.h = nn.ModuleList([Block(C, cfg.n_head) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(C, eps=LAYER_NORM_EPS)

    def forward(self, idx):                                      # (B, T) int64
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)                        # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T                  # (B, T, V): the tied head


# HF GPT-2 name (Conv1D, stored (in, out)) -> ours (nn.Linear, stored (out, in): transposed)
LINEARS = {"attn.c_attn": "c_attn", "attn.c_proj": "attn_proj", "mlp.c_fc": "c_fc",
           "mlp.c_proj": "mlp_proj"}


def nanogpt_from_params(params, cfg: GPTConfig) -> NanoGPT:
    """A NanoGPT (float32, train mode: no dropout anywhere) holding our weights.

    Args:
        params: our parameter tree; cfg: its config (bias and tied head, as GPT-2).
    Returns:
        The model on the CPU.
    Raises:
        RuntimeError: a tensor of ours has no place in the model, or the other way round.
    """
    state = {}
    for name, value in hf_tensors(params, cfg).items():
        name = name.removeprefix("transformer.")
        for hf, ours in LINEARS.items():
            if f".{hf}.weight" in name:
                value = np.ascontiguousarray(np.asarray(value).T)
            name = name.replace(f".{hf}.", f".{ours}.")
        state[name] = torch.tensor(np.asarray(value, np.float32))
    model = NanoGPT(cfg)
    model.load_state_dict(state, strict=True)
    return model
