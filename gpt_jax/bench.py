"""Timing harness behind bench.py.

Method (DESIGN.md "Bench method"): compile time is measured apart (lower + compile); warm-up
calls are excluded; every timed call ends in block_until_ready; each figure is the median of
several repeats with min and max; A/B peers are interleaved repeat by repeat so that drift in a
noisy machine hits both alike. The machine section measures the FLOP peak (large matmul) and the
read bandwidth (read-only reduction over >= 1 GiB) in the same run, so MFU and bandwidth
fractions are stated against figures from this very machine.

Sections register themselves in SECTIONS: name -> fn(ctx) -> list[Result].
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.config import GPTConfig
from gpt_jax.timing import (Timing, block, compile_seconds, measure_matmul_flops, time_call,
                            time_calls)


@dataclass
class Result:
    section: str
    name: str
    metric: str
    value: float
    unit: str
    config: dict = field(default_factory=dict)
    median: Optional[float] = None   # seconds per call (None for derived rows such as ratios)
    min: Optional[float] = None
    max: Optional[float] = None
    repeats: int = 0
    compile_s: Optional[float] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def result_from_timing(section: str, name: str, timing: Timing, *, work: float, metric: str,
                       unit: str, config: Optional[dict] = None,
                       compile_s: Optional[float] = None) -> Result:
    """A throughput row: value = work / median seconds (e.g. tokens per call -> tokens/s)."""
    return Result(section=section, name=name, metric=metric, value=work / timing.median,
                  unit=unit, config=config or {}, median=timing.median, min=timing.min,
                  max=timing.max, repeats=len(timing.times), compile_s=compile_s)


def ratio_row(section: str, name: str, ours: Result, theirs: Result,
              config: Optional[dict] = None) -> Result:
    return Result(section=section, name=name, metric=f"{ours.metric} ratio", unit="x",
                  value=ours.value / theirs.value, config=config or {}, repeats=ours.repeats)


def peak_memory_bytes(compiled) -> Optional[int]:
    """Peak device memory of a compiled program: allocator stats where the device keeps them,
    else XLA's static estimate (arguments + outputs + temporaries - aliased)."""
    try:
        m = compiled.memory_analysis()
        if m is None:
            return None
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # not every backend implements it
        return None


# -- the machine ---------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import jaxlib
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


@dataclass
class Context:
    """What sections share: CLI options and the machine figures measured at the start."""
    repeats: int = 5
    warmup: int = 1
    preset: str = "gpt2"
    batch_size: int = 8
    seq_len: Optional[int] = None       # forward section; None: the model's block_size
    dtype: str = "float32"
    tiny: bool = False                  # smoke-test sizes
    peak_flops: Optional[float] = None  # FLOP/s, from the matmul in the machine section
    peak_flops_bf16: Optional[float] = None  # the same in bfloat16 (measured on accelerators)
    options: dict = field(default_factory=dict)

    def config(self, **overrides) -> GPTConfig:
        return GPTConfig.from_preset(self.preset, dtype=self.dtype, **overrides)

    def model(self) -> tuple[str, GPTConfig]:
        """(name, config) of the model the forward and decode sections run."""
        if self.tiny:
            return "gpt2-tiny", GPTConfig.from_preset("gpt2-tiny", vocab_size=512)
        return self.preset, self.config()


def read_probe(ctx: Context) -> tuple[Callable[[], Any], float]:
    """(fn, bytes): a read-only reduction over >= 1 GiB (64 MiB with --tiny), where every byte
    is read once and almost nothing is written: the floor that a memory-bound decode step
    (reading all weights per token) can approach."""
    nbytes = (64 << 20) if ctx.tiny else (1 << 30) if jax.default_backend() == "cpu" else (4 << 30)
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    return (lambda: f(x)), float(x.nbytes)


def section_machine(ctx: Context) -> list[Result]:
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


def forward_bytes(cfg: GPTConfig, batch: int, seq: int) -> int:
    """The forward section's large buffers (a lower bound of its peak): float32 logits
    (B, T, V), one layer's attention scores (B, H, T, T) and MLP hidden (B, T, 4C)."""
    item = np.dtype(cfg.compute_dtype).itemsize
    return batch * seq * (cfg.vocab_size * 4 + cfg.n_head * seq * 4 + 4 * cfg.n_embd * item)


def check_forward_memory(ctx: Context) -> None:
    """Refuse, before any section runs, a forward batch that would not fit in memory."""
    from gpt_jax.errors import UserError
    from gpt_jax.generate import MEMORY_FRACTION, available_memory_bytes, format_gib
    name, cfg = ctx.model()
    seq = ctx.seq_len or cfg.block_size
    need = forward_bytes(cfg, ctx.batch_size, seq)
    free = available_memory_bytes()
    if free is not None and need > MEMORY_FRACTION * free:
        raise UserError(f"forward section: batch {ctx.batch_size} x seq {seq} of {name} needs "
                        f"about {format_gib(need)} (logits and activations) but "
                        f"{format_gib(free)} is available: pass a smaller --batch_size or "
                        f"--seq_len")


def section_forward(ctx: Context) -> list[Result]:
    """Tokens/s of the jitted forward pass (logits for every position) for one preset."""
    from gpt_jax.model import GPT, init_params
    preset, cfg = ctx.model()
    B, T = ctx.batch_size, ctx.seq_len or cfg.block_size
    if T > cfg.block_size:
        from gpt_jax.errors import UserError
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
        from gpt_jax.model import count_params
        flops_per_token = 2 * count_params(cfg, non_embedding=True) + 4 * cfg.n_layer * cfg.n_embd * T
        rows.append(Result("forward", f"{preset} forward", "utilisation of matmul peak",
                           row.value * flops_per_token / ctx.peak_flops, "fraction", conf))
    return rows


def _torch_train_step(params, cfg: GPTConfig, tc):
    """A Hugging Face GPT2LMHeadModel + torch AdamW step with our recipe (same weights, decay
    groups, clipping): the peer. Returns step(tokens (B, T + 1) numpy) -> loss float."""
    import torch
    from gpt_jax.hf import to_transformers
    model = to_transformers(params, cfg)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), eps=1e-8)

    def step(tokens):
        x = torch.from_numpy(tokens[:, :-1].astype(np.int64))
        y = torch.from_numpy(tokens[:, 1:].astype(np.int64))
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def _have_peers(ctx: Context, section: str) -> bool:
    """Whether to time the Hugging Face PyTorch peers (installed, and not --peers false)."""
    if not ctx.options.get("peers", True):
        return False
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        print(f"[bench] {section}: torch/transformers missing, skipping the Hugging Face peer "
              f"rows (pip install 'gpt-jax[test]')", file=sys.stderr)
        return False
    # All cores, as HF would use them (bench.py --torch_threads overrides: on a machine that
    # other jobs load, OpenMP threads that spin-wait for a descheduled peer crawl).
    torch.set_num_threads(ctx.options.get("torch_threads") or os.cpu_count() or 1)
    return True


def train_variants(ctx: Context) -> list[tuple[str, dict]]:
    """(label, GPTConfig overrides) of our train step: float32 always; bfloat16 on accelerators
    (or when asked: XLA:CPU runs bfloat16 dots ~15x slower than float32); on a GPU, bfloat16
    attention through cuDNN's fused kernel and through XLA."""
    variants = [("float32", {})]
    backend = jax.default_backend()
    if backend != "cpu" or ctx.dtype == "bfloat16":
        variants.append(("bfloat16", {"dtype": "bfloat16"}))
    if backend == "gpu":
        variants[-1] = ("bfloat16 cudnn attn", {"dtype": "bfloat16", "attn_impl": "cudnn"})
        variants.append(("bfloat16 xla attn", {"dtype": "bfloat16", "attn_impl": "xla"}))
    return variants


def section_train(ctx: Context) -> list[Result]:
    """Tokens/s, step time and MFU of the full jitted train step (forward, backward, AdamW,
    clipping) against Hugging Face GPT2LMHeadModel + torch AdamW on the same weights and
    batches, interleaved. FLOPs per token: 6N + 12 L C T (DESIGN.md)."""
    from gpt_jax.model import count_params, init_params
    from gpt_jax.train import TrainConfig, flops_per_token, init_state, make_optimizer, \
        make_train_step
    sizes = [("4x256", dict(n_layer=4, n_head=4, n_embd=256), 8)]
    if ctx.tiny:
        sizes = [("tiny", dict(n_layer=2, n_head=2, n_embd=64), 2)]
    elif ctx.options.get("train_gpt2", True):
        sizes.append(("gpt2-small", dict(n_layer=12, n_head=12, n_embd=768), 4))
    T = 64 if ctx.tiny else 256
    have_torch = _have_peers(ctx, "train")
    rows = []
    for name, arch, B in sizes:
        tc = TrainConfig(**arch, block_size=T, batch_size=B, vocab_size=50257)
        base = tc.model_config()
        tx, sched = make_optimizer(tc)
        params = init_params(base, jax.random.key(0))
        rng = np.random.default_rng(0)
        batches = [rng.integers(0, base.n_real_vocab, (1, B, T + 1), dtype=np.int32)
                   for _ in range(4)]
        fns, compile_s, configs = {}, {}, {}
        for label, overrides in train_variants(ctx):
            cfg = base.replace(**overrides)
            # The step donates its state: each variant gets its own copy of the weights.
            state = init_state(jax.tree_util.tree_map(jnp.copy, params), tx, jax.random.key(1))
            step, compile_s[label] = compile_seconds(make_train_step(cfg, tx, sched), state,
                                                     batches[0])
            box = {"state": state, "i": 0}

            def ours(step=step, box=box):
                box["i"] += 1
                box["state"], m = step(box["state"], batches[box["i"] % 4])
                return m["loss"]
            fns[label], configs[label] = ours, cfg
        if have_torch:
            peer = _torch_train_step(params, base, tc)
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
            res[impl] = result_from_timing("train", f"{name} {label}", t, work=B * T,
                                           metric="tokens/s", unit="tokens/s", config=conf,
                                           compile_s=compile_s.get(impl))
            rows.append(res[impl])
            peak = ctx.peak_flops
            if cfg.dtype != "float32" and ctx.peak_flops_bf16:
                peak = ctx.peak_flops_bf16
            if peak:
                rows.append(Result("train", f"{name} {label}", "MFU (vs measured matmul)",
                                   res[impl].value * fpt / peak, "fraction", conf))
        if "torch" in res:
            conf = {**arch, "batch": B, "seq": T, "dtype": "float32"}
            rows.append(ratio_row("train", f"{name} gpt_jax / HF torch", res["float32"],
                                  res["torch"], conf))
    return rows


def params_to_hf(params, cfg: GPTConfig):
    """The PyTorch peer for decoding: our weights in a GPT2LMHeadModel that generates exactly
    max_new_tokens (no EOS stop)."""
    from gpt_jax.hf import to_transformers
    model = to_transformers(params, cfg)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def section_decode(ctx: Context) -> list[Result]:
    """Greedy decoding tokens/s: our cached lax.scan decoder vs our jitted no-cache recompute vs
    Hugging Face PyTorch generate(use_cache=True), interleaved, at batch 1 and 8; the same
    decoder op by op (jit disabled: what compiling buys); the read-bandwidth floor at batch 1
    (all weights are read once per step)."""
    from gpt_jax.generate import _decode, decode_args, generate, generate_uncached
    from gpt_jax.model import count_params, init_params
    peers = _have_peers(ctx, "decode")
    if peers:
        import torch
    name, cfg = ctx.model()
    P, N = (8, 16) if ctx.tiny else (32, 128)
    n_uncached = 8 if ctx.tiny else 16  # a full forward per token: fewer tokens, same method
    n_eager = 2 if ctx.tiny else 4      # op by op: a few tokens (prefill + steps) tell the rate
    params = init_params(cfg, jax.random.key(0))
    hf = params_to_hf(params, cfg) if peers else None
    rows: list[Result] = []
    for B in (1, 8):
        prompts = np.random.default_rng(B).integers(0, cfg.n_real_vocab, (B, P))
        args, static = decode_args(params, cfg, prompts, N, temperature=0)
        ours, compile_s = compile_seconds(_decode, *args, **static)
        tokens, pad = args[2:4]                 # left-padded, as decode_args placed them
        unc, unc_compile_s = compile_seconds(generate_uncached, params, tokens, pad, cfg=cfg,
                                             max_new_tokens=n_uncached)
        fns = {"ours": lambda: ours(*args), "uncached": lambda: unc(params, tokens, pad)}
        if B == 1:  # the read floor, timed between the same runs (bandwidth drifts by minutes)
            fns["read"], read_bytes = read_probe(ctx)
        conf = {"preset": name, "batch": B, "prompt": P, "new_tokens": N, "dtype": cfg.dtype,
                "greedy": True, "torch_threads": torch.get_num_threads() if hf is not None else None}
        if hf is not None:
            ids = torch.from_numpy(prompts)

            def hf_generate():
                with torch.inference_mode():
                    return hf.generate(ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                       use_cache=True)
            fns["hf"] = hf_generate
            same = np.asarray(ours(*args)) == hf_generate()[:, P:].numpy()
            conf_hf = {**conf, "greedy_tokens_equal_ours": float(same.mean())}
        t = time_calls(fns, ctx.repeats, ctx.warmup)
        row = result_from_timing("decode", f"ours cached scan b{B}", t["ours"], work=B * N,
                                 metric="tokens/s", unit="tokens/s", config=conf,
                                 compile_s=compile_s)
        rows.append(row)
        rows.append(result_from_timing(
            "decode", f"ours uncached recompute b{B}", t["uncached"], work=B * n_uncached,
            metric="tokens/s", unit="tokens/s", config={**conf, "new_tokens": n_uncached},
            compile_s=unc_compile_s))
        with jax.disable_jit():
            eager = time_call(lambda: generate(params, cfg, prompts, n_eager, temperature=0),
                              max(1, min(ctx.repeats, 2)), 1)
        eager_row = result_from_timing("decode", f"ours op-by-op (jit disabled) b{B}", eager,
                                       work=B * n_eager, metric="tokens/s", unit="tokens/s",
                                       config={**conf, "new_tokens": n_eager})
        rows += [eager_row, ratio_row("decode", f"ours jitted / op-by-op b{B}", row, eager_row,
                                      conf)]
        if hf is not None:
            peer = result_from_timing("decode", f"HF PyTorch generate b{B}", t["hf"],
                                      work=B * N, metric="tokens/s", unit="tokens/s",
                                      config=conf_hf)
            rows += [peer, ratio_row("decode", f"ours / HF PyTorch b{B}", row, peer, conf)]
        if B == 1:
            # Per token the step reads every weight once (wte as the tied head; of wpe one row).
            weight_bytes = count_params(cfg, non_embedding=True) * cfg.compute_dtype(0).itemsize
            bw_conf = {**conf, "weight_bytes_per_token": weight_bytes, "read_bytes": read_bytes,
                       "read_bandwidth": read_bytes / t["read"].median}
            floor = result_from_timing("decode", "read-bandwidth floor b1", t["read"],
                                       work=read_bytes / weight_bytes, metric="max tokens/s",
                                       unit="tokens/s", config=bw_conf)
            rows.append(floor)
            rows.append(Result("decode", "ours cached scan b1", "fraction of bandwidth floor",
                               row.value / floor.value, "fraction", bw_conf))
    return rows


def section_scale(ctx: Context) -> list[Result]:
    """Memory and compile time for deep models: the full train step (forward, backward, AdamW)
    of a 12-layer model on one device, plain, with remat, with scan_layers and with both, in
    the same run (step timings interleaved). Peak memory is XLA's static estimate from
    compiled.memory_analysis() (arguments + outputs + temporaries - donated) where the device
    keeps no allocator statistics, as on CPU. Kept affordable on a 2-core CPU: 256 wide,
    block 256, batch 4 and an 8192-token vocabulary, so that the layers (not the LM head)
    dominate; ctx.tiny: 2 layers x 64."""
    from gpt_jax.sharding import make_global_batch, make_mesh
    from gpt_jax.train import TrainConfig, make_optimizer, make_train_step, new_state
    if ctx.tiny:
        label, arch, B, T, V = "tiny-2x64", dict(n_layer=2, n_head=2, n_embd=64), 2, 64, 512
    else:
        label, arch, B, T, V = "12x256", dict(n_layer=12, n_head=4, n_embd=256), 4, 256, 8192
    tc = TrainConfig(**arch, block_size=T, batch_size=B, vocab_size=V)
    cfg = tc.model_config()
    tx, schedule = make_optimizer(tc)
    mesh = make_mesh(None, jax.devices()[:1])
    tokens = np.random.default_rng(0).integers(0, V, (1, B, T + 1), dtype=np.int32)
    batch = make_global_batch(tokens, mesh, tokens.shape)
    variants = {"plain": (False, False), "remat": (True, False), "scan_layers": (False, True),
                "scan_layers+remat": (True, True)}
    conf = {**arch, "batch": B, "seq": T, "vocab": V, "dtype": "float32",
            "devices": 1}
    fns, compile_s, memory = {}, {}, {}
    for name, (remat, scan) in variants.items():
        box = {"state": new_state(cfg, tx, mesh, seed=0, scan_layers=scan)}
        step = make_train_step(cfg, tx, schedule, mesh=mesh, remat=remat, scan_layers=scan)
        box["step"], compile_s[name] = compile_seconds(step, box["state"], batch)
        memory[name] = peak_memory_bytes(box["step"])

        def run(box=box):
            box["state"], m = box["step"](box["state"], batch)
            return m["loss"]
        fns[name] = run
    timings = time_calls(fns, ctx.repeats, ctx.warmup)
    rows = []
    for name, (remat, scan) in variants.items():
        c = {**conf, "remat": remat, "scan_layers": scan}
        rows.append(result_from_timing("scale", f"{label} {name}", timings[name], work=B * T,
                                       metric="train step tokens/s", unit="tokens/s", config=c,
                                       compile_s=compile_s[name]))
        rows.append(Result("scale", f"{label} {name}", "compile time", compile_s[name], "s", c))
        if memory[name] is not None:
            rows.append(Result("scale", f"{label} {name}", "peak memory (XLA estimate)",
                               float(memory[name]), "bytes", c))
    rows.append(Result("scale", f"{label} scan_layers / plain", "compile time ratio",
                       compile_s["scan_layers"] / compile_s["plain"], "x", conf))
    if memory["plain"] and memory["remat"]:
        rows.append(Result("scale", f"{label} remat / plain", "peak memory ratio",
                           memory["remat"] / memory["plain"], "x", conf))
    return rows


SECTIONS: dict[str, Callable[[Context], list[Result]]] = {
    "machine": section_machine,
    "forward": section_forward,
    "train": section_train,
    "decode": section_decode,
    "scale": section_scale,
}


def run_sections(ctx: Context, names: list[str], log=print) -> list[Result]:
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        from gpt_jax.errors import UserError
        raise UserError(f"unknown bench section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if "machine" not in names and ctx.peak_flops is None:
        names = ["machine"] + names  # MFU and bandwidth fractions need this run's figures
    results: list[Result] = []
    for name in names:
        log(f"[bench] section {name} ...", file=sys.stderr)
        t0 = time.perf_counter()
        results += SECTIONS[name](ctx)
        log(f"[bench] section {name} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return results


def format_value(value: float, unit: str) -> str:
    if unit in ("FLOP/s", "B/s"):
        for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
            if value >= scale:
                return f"{value / scale:.1f} {prefix}{unit}"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "bytes":
        return f"{value / 2**20:,.1f} MiB"
    return f"{value:,.1f} {unit}"


def format_table(results: list[Result]) -> str:
    lines = [f"{'section':<9} {'name':<44} {'metric':<28} {'value':>18} {'median s':>9} "
             f"{'compile s':>9}"]
    for r in results:
        med = f"{r.median:.4f}" if r.median is not None else ""
        comp = f"{r.compile_s:.1f}" if r.compile_s is not None else ""
        note = ""
        if r.median and r.min is not None and r.median > 0 and (r.max - r.min) / r.median > 0.2:
            note = f"  (wide spread: {r.min:.4f}-{r.max:.4f} s)"
        lines.append(f"{r.section:<9} {r.name[:44]:<44} {r.metric[:28]:<28} "
                     f"{format_value(r.value, r.unit):>18} {med:>9} {comp:>9}{note}")
    return "\n".join(lines)


def write_plot(path: str, results: list[Result]) -> None:
    """A PNG: one panel per section, a bar per tokens/s row (whiskers: min-max over repeats),
    the section's ratio rows in its title. Log scale where a panel spans over 50x."""
    import textwrap
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = {}
    for r in results:
        if r.unit == "tokens/s":
            panels.setdefault(r.section, []).append(r)
    if not panels:
        return
    fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                             figsize=(10, 1.5 + 0.4 * sum(len(v) + 2 for v in panels.values())),
                             gridspec_kw={"height_ratios": [len(v) + 1 for v in panels.values()]})
    for ax, (section, bars) in zip(axes[:, 0], panels.items()):
        values = [r.value for r in bars]
        # value = work / median time, so the min-max times map to value * median / time.
        lo = [v - v * r.median / r.max if r.max else 0 for v, r in zip(values, bars)]
        hi = [v * r.median / r.min - v if r.min else 0 for v, r in zip(values, bars)]
        ax.barh(range(len(bars)), values, xerr=[lo, hi], color="tab:blue", ecolor="black")
        ax.set_yticks(range(len(bars)), [r.name for r in bars], fontsize=8)
        ax.invert_yaxis()
        if max(values) > 50 * min(values):
            ax.set_xscale("log")
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,.1f}", va="center", fontsize=7)
        ax.set_xlabel("tokens/s", fontsize=8)
        ratios = [f"{r.name}: {r.value:.2f}x" for r in results
                  if r.section == section and r.unit == "x"]
        title = section + ("\n" + "\n".join(textwrap.wrap("; ".join(ratios), 120)) if ratios else "")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, results: list[Result]) -> None:
    doc = {"machine": machine_info(), "results": [r.to_dict() for r in results]}
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, path)
    finally:  # a failed write (disk full) leaves no partial file behind
        if os.path.exists(tmp):
            os.remove(tmp)
