"""Attention alone: jax.nn.dot_product_attention, causal, forward + backward, through cuDNN's
fused kernel (implementation="cudnn", GPU only) and through XLA (implementation="xla"),
interleaved on the same inputs. The gpu suite runs it (suite.py); it is not one of bench.py's
default sections (the train section compares the two paths inside a whole step)."""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp

from gpt_jax.lab.bench.harness import Context, Result, ratio_row, result_from_timing
from gpt_jax.utils.timing import compile_seconds, time_calls

# gpt2-124m's attention in the suite's train step: batch 16 x 1024, 12 heads of 64.
SHAPE = (16, 1024, 12, 64)          # (B, T, H, D)
TINY_SHAPE = (2, 64, 2, 16)


def implementations() -> list[str]:
    """cuDNN's kernel runs only on a GPU (it raises elsewhere), XLA's everywhere."""
    return ["cudnn", "xla"] if jax.default_backend() == "gpu" else ["xla"]


def attention_step(implementation: str):
    """jit of (q, k, v, g) -> (out, dq, dk, dv): causal attention and the gradients of
    sum(out * g), what a train step asks of the attention op."""
    def out(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                            implementation=implementation)

    def step(q, k, v, g):
        o, vjp = jax.vjp(out, q, k, v)
        return (o, *vjp(g))
    return jax.jit(step)


def run(ctx: Context) -> list[Result]:
    """Tokens/s (B * T per call) of each implementation at gpt2-124m's shapes in the suite's
    dtype, and the cuDNN / XLA ratio where both ran."""
    B, T, H, D = TINY_SHAPE if ctx.tiny else SHAPE
    dtype = jnp.dtype(ctx.dtype)
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, g = (jax.random.normal(key, (B, T, H, D), dtype) for key in keys)   # (B, T, H, D)
    fns, compile_s = {}, {}
    for impl in implementations():
        step, compile_s[impl] = compile_seconds(attention_step(impl), q, k, v, g)
        fns[impl] = lambda step=step: step(q, k, v, g)
    if "cudnn" not in fns:
        print(f"[bench] attention: cuDNN's kernel needs a GPU (backend here: "
              f"{jax.default_backend()}): XLA only", file=sys.stderr)
    t = time_calls(fns, ctx.repeats, ctx.warmup)
    conf = {"batch": B, "seq": T, "heads": H, "head_dim": D, "dtype": dtype.name,
            "causal": True, "pass": "forward + backward"}
    rows = {impl: result_from_timing("attention", f"{impl} attention", t[impl], work=B * T,
                                     metric="tokens/s", unit="tokens/s",
                                     config={**conf, "implementation": impl},
                                     compile_s=compile_s[impl])
            for impl in fns}
    out = list(rows.values())
    if {"cudnn", "xla"} <= set(rows):
        out.append(ratio_row("attention", "cudnn / xla attention", rows["cudnn"], rows["xla"],
                             conf))
    return out
