"""Section "scale": memory and compile time of a deep model's train step, plain, with remat, with
scan_layers and with both."""
from __future__ import annotations

import jax
import numpy as np

from gpt_jax.lab.bench.harness import Context, Result, peak_memory_bytes, result_from_timing
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.model.sharding import make_global_batch, make_mesh
from gpt_jax.train.state import new_state
from gpt_jax.train.steps import make_train_step
from gpt_jax.utils.timing import compile_seconds, time_calls
from gpt_jax.train.config import TrainConfig


def run(ctx: Context) -> list[Result]:
    """Memory and compile time for deep models: the full train step (forward, backward, AdamW)
    of a 12-layer model on one device, plain, with remat, with scan_layers and with both, in
    the same run (step timings interleaved). Peak memory is XLA's static estimate from
    compiled.memory_analysis() (arguments + outputs + temporaries - donated) where the device
    keeps no allocator statistics, as on CPU. Kept affordable on a 2-core CPU: 256 wide,
    block 256, batch 4 and an 8192-token vocabulary, so that the layers (not the LM head)
    dominate; ctx.tiny: 2 layers x 64."""
    if ctx.tiny:
        label, arch, B, T, V = "tiny-2x64", dict(n_layer=2, n_head=2, n_embd=64), 2, 64, 512
    else:
        label, arch, B, T, V = "12x256", dict(n_layer=12, n_head=4, n_embd=256), 4, 256, 8192
    tc = TrainConfig.from_dict(dict(**arch, block_size=T, batch_size=B, vocab_size=V))
    cfg = tc.model
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
