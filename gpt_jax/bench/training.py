"""Section "train": the full jitted train step against Hugging Face GPT2LMHeadModel + torch
AdamW on the same weights and batches, interleaved."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.bench.harness import (Context, Result, peak_memory_bytes, ratio_row,
                                   result_from_timing)
from gpt_jax.bench.peers import have_peers, torch_train_step
from gpt_jax.model import attention_implementation, count_params, init_params
from gpt_jax.timing import compile_seconds, time_calls
from gpt_jax.flops import datasheet_flops, flops_per_token
from gpt_jax.optimizer import make_optimizer
from gpt_jax.state import init_state
from gpt_jax.steps import make_train_step
from gpt_jax.train_config import TrainConfig


def train_variants(ctx: Context) -> list[tuple[str, dict]]:
    """(label, GPTConfig overrides) of our train step: float32 (unless the option train_float32
    is false); bfloat16 on accelerators (or when asked: XLA:CPU runs bfloat16 dots ~15x slower
    than float32); on a GPU, bfloat16 attention through cuDNN's fused kernel and through XLA."""
    variants = [("float32", {})] if ctx.options.get("train_float32", True) else []
    backend = jax.default_backend()
    if backend != "cpu" or ctx.dtype == "bfloat16":
        variants.append(("bfloat16", {"dtype": "bfloat16"}))
    if backend == "gpu":
        variants[-1] = ("bfloat16 cudnn attn", {"dtype": "bfloat16", "attn_impl": "cudnn"})
        variants.append(("bfloat16 xla attn", {"dtype": "bfloat16", "attn_impl": "xla"}))
    return variants


def train_sizes(ctx: Context) -> list[tuple[str, dict, int, int]]:
    """(label, model fields, batch, seq) to time: the option train_sizes where a suite sets
    one; by default 4 x 256 and GPT-2-small widths at block 256 (--train_gpt2 false drops
    those); --tiny: 2 x 64 at block 64 with 512 ids whatever was asked."""
    if ctx.tiny:
        return [("tiny", dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512), 2, 64)]
    if ctx.options.get("train_sizes"):
        return list(ctx.options["train_sizes"])
    sizes = [("4x256", dict(n_layer=4, n_head=4, n_embd=256), 8, 256)]
    if ctx.options.get("train_gpt2", True):
        sizes.append(("gpt2-small", dict(n_layer=12, n_head=12, n_embd=768), 4, 256))
    return sizes


def run(ctx: Context) -> list[Result]:
    """Tokens/s, step time and MFU of the full jitted train step (forward, backward, AdamW,
    clipping) against Hugging Face GPT2LMHeadModel + torch AdamW on the same weights and
    batches, interleaved. FLOPs per token: 6N + 12 L C T (docs/design.md). MFU is stated
    against this run's measured matmul and, on a device with a datasheet figure
    (flops.PEAK_FLOPS, dense bf16), against that for the 16-bit variants; on a GPU the two
    bfloat16 attention paths get a cuDNN / XLA ratio row."""
    have_torch = have_peers(ctx, "train")
    datasheet = datasheet_flops(jax.devices()[0].device_kind)
    rows = []
    for name, arch, B, T in train_sizes(ctx):
        tc = TrainConfig.from_dict({"vocab_size": 50257, **arch, "block_size": T,
                                    "batch_size": B})
        base = tc.model
        tx, sched = make_optimizer(tc)
        params = init_params(base, jax.random.key(0))
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, base.n_real_vocab, (1, B, T + 1), dtype=np.int32)
                   for _ in range(4)]
        fns, compile_s, configs, memory = {}, {}, {}, {}
        for label, overrides in train_variants(ctx):
            cfg = base.replace(**overrides)
            # The step donates its state: each variant gets its own copy of the weights.
            state = init_state(jax.tree_util.tree_map(jnp.copy, params), tx, jax.random.key(1))
            step, compile_s[label] = compile_seconds(make_train_step(cfg, tx, sched), state,
                                                     batches[0])
            memory[label] = peak_memory_bytes(step)
            box = {"state": state, "i": 0}

            def ours(step=step, box=box):
                box["i"] += 1
                box["state"], m = step(box["state"], batches[box["i"] % 4])
                return m["loss"]
            fns[label], configs[label] = ours, cfg
        if have_torch:
            peer = torch_train_step(params, base, tc)
            fns["torch"] = lambda: peer(batches[0][0])
        timings = time_calls(fns, ctx.repeats, ctx.warmup)
        fpt = flops_per_token(base, T, count_params(base, non_embedding=True))
        res = {}
        for impl, t in timings.items():
            cfg = configs.get(impl, base)
            label = f"gpt_jax {impl}" if impl != "torch" else "HF GPT2LMHeadModel + torch AdamW"
            conf = {**arch, "batch": B, "seq": T, "dtype": cfg.dtype, "vocab": cfg.vocab_size,
                    "attn_impl": cfg.attn_impl if impl != "torch" else "torch sdpa",
                    "flops_per_token": fpt}
            if impl != "torch":
                conf["attention"] = attention_implementation(cfg) or "xla"
            res[impl] = result_from_timing("train", f"{name} {label}", t, work=B * T,
                                           metric="tokens/s", unit="tokens/s", config=conf,
                                           compile_s=compile_s.get(impl))
            rows.append(res[impl])
            peak = ctx.peak_flops
            if cfg.dtype != "float32" and ctx.peak_flops_bf16:
                peak = ctx.peak_flops_bf16
            if peak:
                rows.append(Result("train", f"{name} {label}", "MFU (vs measured matmul)",
                                   res[impl].value * fpt / peak, "fraction",
                                   {**conf, "peak_flops": peak}))
            if datasheet and impl != "torch" and cfg.dtype != "float32":
                rows.append(Result("train", f"{name} {label}", "MFU (vs datasheet peak)",
                                   res[impl].value * fpt / datasheet, "fraction",
                                   {**conf, "peak_flops": datasheet,
                                    "device_kind": jax.devices()[0].device_kind}))
            if memory.get(impl):
                rows.append(Result("train", f"{name} {label}", "peak memory (XLA estimate)",
                                   float(memory[impl]), "bytes", conf))
        if {"bfloat16 cudnn attn", "bfloat16 xla attn"} <= set(res):
            rows.append(ratio_row("train", f"{name} cudnn / xla attention",
                                  res["bfloat16 cudnn attn"], res["bfloat16 xla attn"],
                                  {**arch, "batch": B, "seq": T, "dtype": "bfloat16"}))
        if "torch" in res and "float32" in res:
            conf = {**arch, "batch": B, "seq": T, "dtype": "float32"}
            rows.append(ratio_row("train", f"{name} gpt_jax / HF torch", res["float32"],
                                  res["torch"], conf))
    return rows
