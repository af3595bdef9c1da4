"""Section "machine": the FLOP peak (a large matmul) and the read bandwidth (a read-only
reduction), measured first: the other sections state MFU and bandwidth fractions against them."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gpt_jax.lab.bench.harness import Context, Result, read_probe, result_from_timing
from gpt_jax.utils.timing import measure_matmul_flops, time_call


def run(ctx: Context) -> list[Result]:
    n = 512 if ctx.tiny else (8192 if jax.default_backend() != "cpu" else 4096)
    rows = []
    t, flops = measure_matmul_flops(n, repeats=ctx.repeats, warmup=ctx.warmup)
    rows.append(result_from_timing("machine", f"matmul f32 {n}x{n}", t, work=flops,
                                   metric="FLOP/s", unit="FLOP/s", config={"n": n}))
    ctx.peak_flops = rows[-1].value
    if jax.default_backend() != "cpu":
        t, flops = measure_matmul_flops(n, jnp.bfloat16, repeats=ctx.repeats,
                                         warmup=ctx.warmup)
        rows.append(result_from_timing("machine", f"matmul bf16 {n}x{n}", t, work=flops,
                                       metric="FLOP/s", unit="FLOP/s", config={"n": n}))
        ctx.peak_flops_bf16 = rows[-1].value
    read, nb = read_probe(ctx)
    t = time_call(read, ctx.repeats, ctx.warmup)
    rows.append(result_from_timing("machine", f"read-only sum {nb / 2**30:.2f} GiB", t, work=nb,
                                   metric="read bandwidth", unit="B/s", config={"bytes": nb}))
    return rows
