"""Section "forward": tokens/s of the jitted forward pass, and the memory check made before any
section runs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.lab.bench.harness import Context, Result, result_from_timing
from gpt_jax.model.config import GPTConfig
from gpt_jax.errors import UserError
from gpt_jax.generation.memory import MEMORY_FRACTION, available_memory_bytes, format_gib
from gpt_jax.model.gpt import GPT, count_params, init_params
from gpt_jax.utils.timing import compile_seconds, time_call


def forward_bytes(cfg: GPTConfig, batch: int, seq: int) -> int:
    """The forward section's large buffers (a lower bound of its peak): float32 logits
    (B, T, V), one layer's attention scores (B, H, T, T) and MLP hidden (B, T, 4C)."""
    item = np.dtype(cfg.compute_dtype).itemsize
    return batch * seq * (cfg.vocab_size * 4 + cfg.n_head * seq * 4 + 4 * cfg.n_embd * item)


def check_forward_memory(ctx: Context) -> None:
    """Refuse, before any section runs, a forward batch that would not fit in memory."""
    name, cfg = ctx.model()
    seq = ctx.seq_len or cfg.block_size
    need = forward_bytes(cfg, ctx.batch_size, seq)
    free = available_memory_bytes()
    if free is not None and need > MEMORY_FRACTION * free:
        raise UserError(f"forward section: batch {ctx.batch_size} x seq {seq} of {name} needs "
                        f"about {format_gib(need)} (logits and activations) but "
                        f"{format_gib(free)} is available: pass a smaller --batch_size or "
                        f"--seq_len")


def run(ctx: Context) -> list[Result]:
    """Tokens/s of the jitted forward pass (logits for every position) for one preset."""
    preset, cfg = ctx.model()
    B, T = ctx.batch_size, ctx.seq_len or cfg.block_size
    if T > cfg.block_size:
        raise UserError(f"seq_len {T} exceeds {preset}'s block_size {cfg.block_size}")
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.n_real_vocab, jnp.int32)
    fwd = jax.jit(lambda p, x: GPT(cfg).apply({"params": p}, x))
    compiled, compile_s = compile_seconds(fwd, params, tokens)
    t = time_call(lambda: compiled(params, tokens), ctx.repeats, ctx.warmup)
    conf = {"preset": preset, "batch": B, "seq": T, "dtype": cfg.dtype}
    row = result_from_timing("forward", f"{preset} forward", t, work=B * T,
                             metric="tokens/s", unit="tokens/s", config=conf,
                             compile_s=compile_s)
    rows = [row]
    if ctx.peak_flops:
        n_params = count_params(cfg, non_embedding=True)
        flops_per_token = 2 * n_params + 4 * cfg.n_layer * cfg.n_embd * T
        rows.append(Result("forward", f"{preset} forward", "utilisation of matmul peak",
                           row.value * flops_per_token / ctx.peak_flops, "fraction", conf))
    return rows
