"""The torch.compile peers (issue 29 item 1): what a PyTorch user gets from compiling, timed
beside the eager peers (peers.py) on the same weights and batches.

- train: the Hugging Face GPT2LMHeadModel step and a nanoGPT-shaped model's step (nanogpt.py),
  each one torch.compile'd function of forward, backward, clipping and AdamW (fused=True where
  this torch build has the fused kernel for the device, else foreach: the row says which);
- decode: Hugging Face generate(cache_implementation="static") with its decode forward
  compiled: transformers' own recipe, a CompileConfig passed to generate()
  (generation/configuration_utils.py:1632-1676 of transformers 5.24.0). generate() compiles
  only the one-token decode calls (generation/utils.py:3201-3205, get_compiled_call at
  modeling_utils.py:4820); the prefill runs eager. On a CPU generate() compiles only when told
  to (_compile_all_devices, generation/utils.py:2449-2451), which this sets.

torch.compile on a CPU needs a C++ compiler (inductor builds its kernels with it): where there
is none, or compiling fails for any reason, the section gets a "skipped" row with the reason
instead of the peer's figures, and the rest of the bench runs on. Compile time is reported
apart: compile_s is the compiling calls' seconds less as many warm calls' (a train step's
first two calls compile: AdamW's state appears in the first; generate()'s first call).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from gpt_jax.lab.bench.harness import Context, Result
from gpt_jax.lab.bench.peers import torch_adamw, torch_update
from gpt_jax.model.config import GPTConfig

# "default" won on this 2-core CPU (docs/benchmarks.md, "torch.compile peers"); bench.py
# --compile_mode max-autotune-no-cudagraphs times the other (it also benchmarks GEMM
# templates while compiling: minutes more per shape here).
MODES = ("default", "max-autotune-no-cudagraphs")
SKIP_UNIT = "skip"   # a row that says why a peer was not timed (value 1: present)


def compile_unavailable(ctx: Context, device: str = "cpu") -> Optional[str]:
    """Why the torch.compile peers cannot run here, or None when they can: turned off
    (--compile_peers false), torch missing, or (on the CPU) no C++ compiler for inductor."""
    if not ctx.options.get("compile_peers", True):
        return "turned off (--compile_peers false)"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed"
    if device == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
            get_cpp_compiler()   # raises when none of inductor's candidates (CXX, g++...) runs
        except Exception as e:   # any failure to find one is the same answer: no compiling
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            return (f"torch.compile on the CPU needs a C++ compiler and inductor found none "
                    f"({first}); install g++ or set CXX")
    return None


def skip_row(section: str, name: str, reason: str, config: Optional[dict] = None) -> Result:
    """A row in place of a peer's figures: why it was not timed (config["reason"])."""
    return Result(section, name, "skipped", 1.0, SKIP_UNIT, {**(config or {}), "reason": reason})


def fused_adamw(device: str) -> bool:
    """Whether this torch build has fused AdamW for the device (CPU since torch 2.4)."""
    import torch
    p = torch.zeros(2, device=device, requires_grad=True)
    try:
        p.grad = torch.ones_like(p)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, NotImplementedError):
        return False


def compiled_train_step(model, logits_of: Callable, tc, mode: str, device: str = "cpu"):
    """One torch.compile'd train step of model: forward, cross-entropy, backward, clipping to
    tc.grad_clip, AdamW with our recipe's decay groups, zero_grad.

    Args:
        model: a torch module in train mode, on device; logits_of(model, x) -> (B, T, V).
        tc: our TrainConfig (learning rate, betas, weight decay, clipping).
        mode: torch.compile's mode ("default" or MODES[1]).
    Returns:
        (step(tokens (B, T + 1) numpy) -> loss float, {"optimizer": which AdamW, "mode"}).
    """
    import torch
    fused = fused_adamw(device)
    opt = torch_adamw(model, tc, **({"fused": True} if fused else {"foreach": True}))

    def step(x, y):
        return torch_update(model, opt, logits_of(model, x), y, tc).detach()
    fn = torch.compile(step, mode=None if mode == "default" else mode)

    def call(tokens):
        x = torch.from_numpy(tokens[:, :-1].astype(np.int64)).to(device)
        y = torch.from_numpy(tokens[:, 1:].astype(np.int64)).to(device)
        return fn(x, y).item()
    return call, {"optimizer": "AdamW(fused=True)" if fused else "AdamW(foreach=True)",
                  "compile_mode": mode}


def train_peers(params, cfg: GPTConfig, tc, mode: str, device: str = "cpu",
                dtype: str = "float32") -> dict[str, tuple[Callable, dict]]:
    """{label: (step, info)} of the two compiled train-step peers on our weights: Hugging Face
    GPT2LMHeadModel and the nanoGPT-shaped model (dtype: their parameters' dtype; bfloat16 on a
    GPU, as our bfloat16 variants compute)."""
    import torch
    from gpt_jax.checkpoint.hf import to_transformers
    import gpt_jax.lab.bench.nanogpt as nanogpt   # imports torch: here, once torch is known
    tdtype = getattr(torch, dtype)
    hf = to_transformers(params, cfg).to(device, tdtype).train()
    ng = nanogpt.nanogpt_from_params(params, cfg).to(device, tdtype).train()
    return {"hf": compiled_train_step(hf, lambda m, x: m(input_ids=x).logits, tc, mode, device),
            "nanogpt": compiled_train_step(ng, lambda m, x: m(x), tc, mode, device)}


def first_call(fn: Callable) -> float:
    """Seconds of fn's first call (it compiles)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def static_generate(hf_model, mode: str, device: str = "cpu") -> Callable:
    """generate(ids (B, P) numpy, max_new_tokens) -> new tokens (B, N) numpy: greedy, exactly
    max_new_tokens, through a StaticCache with the decode forward compiled (the module
    docstring: transformers' recipe). The first call compiles; calls with the same shapes and
    no larger max_new_tokens reuse the compiled forward."""
    import torch
    from transformers import CompileConfig
    config = CompileConfig(fullgraph=True, mode=mode)
    # generate() compiles on CUDA-like devices only unless told (generation/utils.py:2449-2451)
    config._compile_all_devices = device == "cpu"

    def generate(prompts, max_new_tokens):
        ids = torch.from_numpy(np.asarray(prompts, np.int64)).to(device)
        with torch.inference_mode():
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids),
                                    max_new_tokens=max_new_tokens,
                                    min_new_tokens=max_new_tokens, do_sample=False,
                                    use_cache=True, cache_implementation="static",
                                    compile_config=config)
        return out[:, ids.shape[1]:].cpu().numpy()
    return generate
