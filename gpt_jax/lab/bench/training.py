"""Section "train": the full jitted train step against Hugging Face GPT2LMHeadModel + torch
AdamW and, given a side environment (--flax_python), HF FlaxGPT2LMHeadModule + optax AdamW, on
the same weights and batches, interleaved. Besides wall-clock rows, CPU-time ratios: on a
machine other jobs load, CPU time per step moves less than wall time does."""
from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.lab.bench.compiled import (MODES, compile_unavailable, first_call, skip_row,
                                        train_peers)
from gpt_jax.lab.bench.flax_peer import NOTE, FlaxPeer
from gpt_jax.lab.bench.harness import (Context, Result, peak_memory_bytes, ratio_row,
                                   result_from_timing)
from gpt_jax.lab.bench.peers import have_peers, peer_device, torch_train_step
from gpt_jax.train.loss import loss_fn
from gpt_jax.model.gpt import attention_implementation, count_params, init_params
from gpt_jax.utils.timing import block, compile_seconds, time_calls
from gpt_jax.model.flops import datasheet_flops, flops_per_token
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.train.state import init_state
from gpt_jax.train.steps import make_train_step
from gpt_jax.train.config import TrainConfig


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


def with_cpu_time(fn, seconds: list):
    """fn, appending each call's CPU time in this process (the call waited for) to seconds."""
    def timed():
        c0 = time.process_time()
        out = block(fn())
        seconds.append(time.process_time() - c0)
        return out
    return timed


def cpu_ratio_row(name: str, ours: list, theirs: list, warmup: int, config: dict) -> Result:
    """Speed as ours / theirs from the median CPU seconds per step (warm-up calls dropped)."""
    ours, theirs = ours[warmup:], theirs[warmup:]
    return Result("train", name, "CPU-time speed ratio",
                  statistics.median(theirs) / statistics.median(ours), "x", config,
                  repeats=len(ours))


def run(ctx: Context) -> list[Result]:
    """Tokens/s, step time and MFU of the full jitted train step (forward, backward, AdamW,
    clipping) against Hugging Face GPT2LMHeadModel + torch AdamW and (ctx.options
    "flax_python") HF Flax on the same weights and batches, interleaved. FLOPs per token:
    6N + 12 L C T (docs/design.md). MFU is stated against this run's measured matmul and, on a
    device with a datasheet figure (flops.PEAK_FLOPS, dense bf16), against that for the
    16-bit variants; on a GPU the two bfloat16 attention paths get a cuDNN / XLA ratio row."""
    have_torch = have_peers(ctx, "train")
    flax_python = ctx.options.get("flax_python") if ctx.options.get("peers", True) else None
    if flax_python is None and ctx.options.get("peers", True):
        print(NOTE, file=sys.stderr)
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
        fns, compile_s, configs, memory, cpu, compile_info = {}, {}, {}, {}, {}, {}
        for label, overrides in train_variants(ctx):
            cfg = base.replace(**overrides)
            # The step donates its state: each variant gets its own copy of the weights.
            state = init_state(jax.tree_util.tree_map(jnp.copy, params), tx, jax.random.key(1))
            step, compile_s[label] = compile_seconds(make_train_step(cfg, tx, sched), state,
                                                     batches[0])
            memory[label] = peak_memory_bytes(step)
            box = {"state": state, "i": -1}

            def ours(step=step, box=box):
                box["i"] += 1
                box["state"], m = step(box["state"], batches[box["i"] % 4])
                return m["loss"]
            cpu[label] = []
            fns[label], configs[label] = with_cpu_time(ours, cpu[label]), cfg
        if have_torch:
            peer = torch_train_step(params, base, tc)
            cpu["torch"] = []
            fns["torch"] = with_cpu_time(lambda: peer(batches[0][0]), cpu["torch"])
        # A peer's first loss (on batches[0], before any update) against ours: the same
        # function, or its ratio means nothing.
        ours0 = (float(jax.jit(loss_fn, static_argnums=1)(params, base, batches[0][0]))
                 if have_torch or flax_python else None)
        if have_torch:
            fns.update(compiled_peers(ctx, name, params, base, tc, batches[0][0], ours0, cpu,
                                      compile_info, rows))
        flax = None
        if flax_python:
            flax = FlaxPeer(flax_python, params, base, tc, np.stack([b[0] for b in batches]))
            compile_s["flax"] = flax.compile_s
            # both float32, so 1e-4 is rounding
            if abs(flax.loss0 - ours0) > 1e-4 * abs(ours0):
                flax.close()
                raise RuntimeError(f"HF Flax peer's first loss {flax.loss0} differs from "
                                   f"ours {ours0}: it is not the same model")
            fns["flax"] = flax
        try:
            timings = time_calls(fns, ctx.repeats, ctx.warmup)
        finally:
            if flax is not None:
                flax.close()
        fpt = flops_per_token(base, T, count_params(base, non_embedding=True))
        peers = {"torch": ("HF GPT2LMHeadModel + torch AdamW", "torch sdpa"),
                 "flax": ("HF FlaxGPT2LMHeadModule + optax AdamW", "HF Flax"),
                 **{k: (COMPILED_LABELS[k], "torch sdpa") for k in COMPILED_LABELS}}
        res = {}
        for impl, t in timings.items():
            cfg = configs.get(impl, base)
            label, peer_attn = peers.get(impl, (f"gpt_jax {impl}", None))
            conf = {**arch, "batch": B, "seq": T, "dtype": cfg.dtype, "vocab": cfg.vocab_size,
                    "attn_impl": peer_attn or cfg.attn_impl, "flops_per_token": fpt}
            if impl not in peers:
                conf["attention"] = attention_implementation(cfg) or "xla"
            conf.update(compile_info.get(impl, {}))
            if impl in compile_info:   # the first two calls compiled and ran a step each
                compile_s[impl] = max(conf["first_calls_s"] - 2 * t.median, 0.0)
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
            if datasheet and impl not in peers and cfg.dtype != "float32":
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
        # ours against each peer: float32 where it ran (the CPU), else our first variant
        mine = "float32" if "float32" in res else next(iter(configs), None)
        conf = {**arch, "batch": B, "seq": T, "dtype": configs[mine].dtype if mine else None}
        if flax is not None:
            cpu["flax"] = flax.cpu_seconds
        for impl, peer_name in (("flax", "HF Flax"), ("torch", "HF torch"),
                                ("compiled hf", "HF torch.compile"),
                                ("compiled nanogpt", "nanoGPT torch.compile")):
            if impl in res and mine in res:
                rows.append(ratio_row("train", f"{name} gpt_jax / {peer_name}", res[mine],
                                      res[impl], conf))
                rows.append(cpu_ratio_row(f"{name} gpt_jax / {peer_name} (CPU time)",
                                          cpu[mine], cpu[impl], ctx.warmup, conf))
    if ctx.options.get("train_sizes"):   # a suite's fixed recipe: its own sizes only
        return rows
    return rows + health_overhead(ctx)


COMPILED_LABELS = {"compiled hf": "HF GPT2LMHeadModel + AdamW, torch.compile",
                   "compiled nanogpt": "nanoGPT-style model + AdamW, torch.compile"}


def compiled_peers(ctx: Context, name: str, params, cfg, tc, tokens, ours0: float, cpu: dict,
                   info: dict, rows: list) -> dict:
    """{impl: timed callable} of the torch.compile'd train-step peers (compiled.py), each
    compiled by its first calls on tokens; the first call's loss (before any update) must
    equal ours0, our first loss, or the peer is not the same function. info[impl] gets the
    peer's optimizer, compile mode and first two calls' seconds (both compile); where
    compiling cannot run or fails, rows gets a "skipped" row with the reason and no peer is
    timed (the bench runs on)."""
    device, dtype = peer_device()
    reason = compile_unavailable(ctx, device)
    mode = ctx.options.get("compile_mode") or MODES[0]
    # float32 agrees to rounding; a bfloat16 peer (on a GPU) to bfloat16's 3 digits
    tol = 1e-4 if dtype == "float32" else 2e-2
    fns = {}
    if reason is None:
        try:
            for key, (step, extra) in train_peers(params, cfg, tc, mode, device, dtype).items():
                impl = f"compiled {key}"
                box = {}
                seconds = first_call(lambda: box.setdefault("loss", step(tokens)))
                # the second call compiles again: AdamW's state exists from the first step on
                seconds += first_call(lambda: step(tokens))
                if abs(box["loss"] - ours0) > tol * abs(ours0):
                    rows.append(skip_row("train", f"{name} {COMPILED_LABELS[impl]}",
                                         f"its first loss {box['loss']} differs from ours "
                                         f"{ours0}: not the same model", extra))
                    continue
                info[impl] = {**extra, "first_calls_s": seconds}
                cpu[impl] = []
                fns[impl] = with_cpu_time(lambda step=step: step(tokens), cpu[impl])
        except Exception as e:   # inductor's errors are many: each one is a skip, not a crash
            first = (str(e).strip().splitlines() or [""])[0][:300]
            reason = f"torch.compile failed: {type(e).__name__}: {first}"
            fns = {}
    if reason is not None:
        print(f"[bench] train: torch.compile peers skipped: {reason}", file=sys.stderr)
        rows.append(skip_row("train", f"{name} torch.compile peers", reason))
    return fns


def health_overhead(ctx: Context) -> list[Result]:
    """The cost of the training-health metrics (gpt_jax/train/health.py): the train step of the
    cpu-small config (--tiny: a tiny one) with and without them, each call fetching its metrics
    as the trainer does every step, interleaved; the row is the step-time ratio with / without
    (1.03 = 3% slower)."""
    arch = dict(n_layer=2, n_head=2, n_embd=64, vocab_size=512, block_size=64,
                batch_size=2) if ctx.tiny else {}
    tc = TrainConfig.from_dict(arch)   # the defaults are cpu-small
    cfg, T = tc.model, tc.model.block_size
    tx, sched = make_optimizer(tc)
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, cfg.n_real_vocab, (1, tc.batch_size, T + 1), dtype=np.int32)
               for _ in range(4)]
    fns, compile_s, cpu = {}, {}, {}
    for label, health in (("with health", True), ("without health", False)):
        state = init_state(jax.tree_util.tree_map(jnp.copy, params), tx, jax.random.key(1))
        step, compile_s[label] = compile_seconds(
            make_train_step(cfg, tx, sched, grad_clip=tc.grad_clip, health=health), state,
            batches[0])
        box = {"state": state, "i": -1}

        def call(step=step, box=box):
            box["i"] += 1
            box["state"], m = step(box["state"], batches[box["i"] % 4])
            return jax.device_get(m)
        cpu[label] = []
        fns[label] = with_cpu_time(call, cpu[label])
    repeats = max(3 * ctx.repeats, 3)
    timings = time_calls(fns, repeats, ctx.warmup)
    conf = {"config": "tiny" if ctx.tiny else "cpu-small", "n_layer": cfg.n_layer,
            "n_embd": cfg.n_embd, "batch": tc.batch_size, "seq": T}
    res = {k: result_from_timing("train", f"step {k}", t, work=tc.batch_size * T,
                                 metric="tokens/s", unit="tokens/s", config=conf,
                                 compile_s=compile_s[k]) for k, t in timings.items()}
    slow = timings["with health"].median / timings["without health"].median
    # CPU seconds of this process per step: less moved by other jobs on a shared machine
    w = ctx.warmup
    cpu_slow = (statistics.median(cpu["with health"][w:])
                / statistics.median(cpu["without health"][w:]))
    return [*res.values(), Result("train", "health metrics step-time ratio (with / without)",
                                  "step-time ratio", slow, "x", conf, repeats=repeats),
            Result("train", "health metrics CPU-time ratio (with / without)",
                   "CPU-time ratio", cpu_slow, "x", conf, repeats=repeats)]
