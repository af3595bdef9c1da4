"""The timed half of `python -m gpt_jax.lab.analysis` (docs/analysis.md): what the design choices
that differ from Hugging Face's modeling_gpt2.py and nanoGPT cost or save, each peer timed
interleaved with ours in one process (gpt_jax.utils.timing.time_calls), so that the figures are
ratios that hold on a busy machine.

- cache: decoding through a KV cache that grows by concatenation (Hugging Face's DynamicCache,
  written here in JAX: a new shape every token, so a compile per length), a full recomputation
  per token (nanoGPT's generate), Hugging Face's own generate(), against ours (a preallocated
  heads-major cache in one compiled lax.scan);
- attention: jax.nn.dot_product_attention, our causal_attention and the explicit softmax, with
  PyTorch's scaled_dot_product_attention and nanoGPT's explicit path beside them;
- layout: a batch-1 product with the weight stored (in, out) (Conv1D, flax Dense) or (out, in)
  (nn.Linear, our decode weights on CPU);
- dropout: a training forward + backward with dropout on (which takes the explicit attention
  path) against off.
"""
from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.generation.decoding import compile_generate, generate_uncached
from gpt_jax.generation.prompts import left_pad
from gpt_jax.generation.sampling import first_argmax
from gpt_jax.generation.step import init_cache
from gpt_jax.lab.bench.peers import params_to_hf
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import (GPT, attention_with_dropout, causal_attention, causal_mask,
                               init_params, layer_norm, mask_padded_vocab)
from gpt_jax.train.loss import loss_fn
from gpt_jax.utils.timing import Timing, time_calls

# Small widths for the timed comparisons: the 2-core machine is shared, and the ratios, not
# the absolute figures, are the point.
SPEED_CFG = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256)
TINY_SPEED_CFG = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=256)


def timing_row(t: Timing, work: float = 1.0) -> dict:
    """A Timing as JSON: median / min / max seconds, and work per second at the median."""
    return {"median_s": t.median, "min_s": t.min, "max_s": t.max, "repeats": len(t.times),
            "per_s": work / t.median}


# -- a KV cache that grows by concatenation (Hugging Face's DynamicLayer.update, in JAX) ---------

def _dense(p, x):
    return x @ p["kernel"] + p["bias"] if "bias" in p else x @ p["kernel"]


@functools.partial(jax.jit, static_argnames="cfg")
def _prefill(params, tokens, *, cfg: GPTConfig):
    """The prompt (B, P) in one pass: (logits (B, V) of its last position, per layer (k, v)
    each (B, H, P, D), the layout Hugging Face's cache keeps)."""
    B, P = tokens.shape
    logits, cache = GPT(cfg).apply({"params": params}, tokens, mask=causal_mask(P),
                                   kv_cache=init_cache(cfg, B, P), cache_index=0,
                                   logits_at=P - 1)
    return logits[:, 0], tuple(tuple(a.transpose(0, 2, 1, 3) for a in kv) for kv in cache)


def growing_step(params, cfg: GPTConfig, tok, position, cache):
    """One token per row through a cache that grows: tok (B,), position scalar, cache per layer
    (k, v) each (B, H, t, D) -> (logits float32 (B, V), caches (B, H, t + 1, D)). Every call
    has new shapes, so under jit each length is a trace and a compile of its own."""
    B, H, D = tok.shape[0], cfg.n_head, cfg.head_dim
    norm = lambda p, x: layer_norm(cfg).apply({"params": p}, x)
    x = params["wte"]["embedding"][tok] + params["wpe"]["embedding"][position]     # (B, C)
    new = []
    for i in range(cfg.n_layer):
        p = params[f"h_{i}"]
        qkv = _dense(p["attn"]["c_attn"], norm(p["ln_1"], x))
        q, k, v = (a.reshape(B, H, 1, D) for a in jnp.split(qkv, 3, axis=-1))
        k = jnp.concatenate([cache[i][0], k], axis=2)         # torch.cat([keys, k], dim=-2)
        v = jnp.concatenate([cache[i][1], v], axis=2)
        new.append((k, v))
        s = jnp.einsum("bhqd,bhsd->bhqs", q, k) / math.sqrt(D)  # the last query sees all keys
        y = jnp.einsum("bhqs,bhsd->bhqd", jax.nn.softmax(s, axis=-1), v).reshape(B, -1)
        x = x + _dense(p["attn"]["c_proj"], y)
        x = x + _dense(p["mlp"]["c_proj"],
                       jax.nn.gelu(_dense(p["mlp"]["c_fc"], norm(p["ln_2"], x)), approximate=True))
    x = norm(params["ln_f"], x)
    logits = jnp.einsum("bc,vc->bv", x, params["wte"]["embedding"],
                        preferred_element_type=jnp.float32)
    return mask_padded_vocab(logits, cfg), tuple(new)


class GrowingDecoder:
    """Greedy decoding with growing_step in a Python loop, as Hugging Face's generate() drives
    its DynamicCache. `traces` counts the step's traces (one per cache length); a new instance
    starts with an empty compile cache (for timing the first, compiling, call)."""

    def __init__(self, cfg: GPTConfig):
        self.cfg, self.traces = cfg, 0

        def step(params, tok, position, cache):
            self.traces += 1
            return growing_step(params, cfg, tok, position, cache)
        self._step = jax.jit(step)

    def __call__(self, params, tokens, max_new_tokens: int):
        """tokens (B, P) prompts of one length -> int32 (B, max_new_tokens)."""
        P = tokens.shape[1]
        logits, cache = _prefill(params, jnp.asarray(tokens), cfg=self.cfg)
        out = [first_argmax(logits)]
        for i in range(max_new_tokens - 1):
            logits, cache = self._step(params, out[-1], jnp.int32(P + i), cache)
            out.append(first_argmax(logits))
        return jnp.stack(out, axis=1)


# -- the timed comparisons ----------------------------------------------------------------------

def cache_speed(params, cfg: GPTConfig, *, prompt_len: int = 16, new_tokens: int = 64,
                cold_tokens: int = 8, repeats: int = 3, hf: bool = True) -> dict:
    """Greedy batch-1 decoding of new_tokens after a prompt: ours (generate's compiled
    program), the growing cache warm (every length already compiled), the uncached
    recomputation and Hugging Face's generate() (DynamicCache, eager PyTorch) on the same
    weights, interleaved: tokens/s, each one's time over ours, and whether it produced our
    tokens. Then the growing cache's first call over cold_tokens tokens, which compiles once
    per cache length (seconds per token, compiles)."""
    prompt = np.asarray(jax.random.randint(jax.random.key(1), (1, prompt_len), 0,
                                           cfg.n_real_vocab), np.int32)
    N = new_tokens
    ours_fn, ours_args = compile_generate(params, cfg, prompt, N, temperature=0)
    tokens, pad = left_pad(prompt, cfg)
    growing = GrowingDecoder(cfg)
    fns = {"ours": lambda: ours_fn(*ours_args),
           "growing": lambda: growing(params, prompt, N),
           "uncached": lambda: generate_uncached(params, tokens, pad, cfg=cfg,
                                                 max_new_tokens=N)}
    outs = {name: np.asarray(fn()) for name, fn in fns.items()}
    if hf:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        model = params_to_hf(params, cfg)
        x = torch.from_numpy(prompt.astype(np.int64))

        def hf_fn():
            with torch.no_grad():
                return model.generate(x, max_new_tokens=N, min_new_tokens=N, do_sample=False)
        fns["hf_dynamic_cache"] = hf_fn
        outs["hf_dynamic_cache"] = hf_fn()[:, prompt_len:].numpy()
    times = time_calls(fns, repeats=repeats, warmup=1)
    ours = times["ours"].median
    rows = {name: {**timing_row(t, N), "time_over_ours": t.median / ours,
                   "min_over_ours": t.min / times["ours"].min,
                   "same_tokens_as_ours": bool(np.array_equal(outs[name], outs["ours"]))}
            for name, t in times.items()}
    rows["growing"]["compiles"] = growing.traces   # N - 1: the timed calls compiled nothing
    cold = GrowingDecoder(cfg)               # an empty compile cache
    t0 = _now()
    cold_out = np.asarray(cold(params, prompt, cold_tokens))
    cold_s = _now() - t0
    rows["growing_first_call"] = {
        "new_tokens": cold_tokens, "seconds": cold_s, "compiles": cold.traces,
        "seconds_per_token": cold_s / cold_tokens,
        "per_token_over_ours": cold_s / cold_tokens / (ours / N),
        "same_tokens_as_ours": bool(np.array_equal(cold_out, outs["ours"][:, :cold_tokens]))}
    return {"config": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "vocab": cfg.vocab_size,
                       "batch": 1, "prompt": prompt_len, "new_tokens": N},
            "decoders": rows}


def attention_speed(shape=(4, 256, 4, 64), repeats: int = 5, torch_peers: bool = True) -> dict:
    """Causal attention, forward + backward, float32, (B, T, H, D): each implementation's time
    over jax.nn.dot_product_attention's, and its largest difference from it."""
    B, T, H, D = shape
    q, k, v, g = (jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(0), 4))
    mask = causal_mask(T)
    impls = {
        "jax.nn.dot_product_attention": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True),
        "gpt_jax causal_attention": causal_attention,
        "explicit softmax (dropout path)": lambda q, k, v: attention_with_dropout(q, k, v, mask),
    }

    def fwd_bwd(f):
        def run(q, k, v, g):
            o, vjp = jax.vjp(f, q, k, v)
            return (o, *vjp(g))
        return jax.jit(run)
    fns, outs = {}, {}
    for name, f in impls.items():
        step = fwd_bwd(f)
        fns[name] = functools.partial(step, q, k, v, g)
        outs[name] = np.asarray(step(q, k, v, g)[0])
    if torch_peers:
        import torch
        tq, tk, tv, tg = (torch.from_numpy(np.asarray(a).transpose(0, 2, 1, 3).copy())
                          .requires_grad_() for a in (q, k, v, g))
        tmask = torch.ones(T, T, dtype=torch.bool).tril()

        def sdpa(q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

        def manual(q, k, v):   # nanoGPT's path without flash: scale, masked_fill, softmax
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(~tmask, float("-inf"))
            return torch.softmax(att, dim=-1) @ v

        def torch_step(f):
            def run():
                o = f(tq, tk, tv)
                return (o.detach(), *torch.autograd.grad(o, (tq, tk, tv), tg))
            return run
        for name, f in (("torch scaled_dot_product_attention", sdpa),
                        ("torch explicit (nanoGPT without flash)", manual)):
            fns[name] = torch_step(f)
            outs[name] = fns[name]()[0].numpy().transpose(0, 2, 1, 3)
    times = time_calls(fns, repeats=repeats, warmup=1)
    base_name = "jax.nn.dot_product_attention"
    base = times[base_name].median
    return {"config": {"batch": B, "seq": T, "heads": H, "head_dim": D, "dtype": "float32",
                       "pass": "forward + backward"},
            "implementations": {
                name: {**timing_row(t, B * T), "time_over_dot_product_attention":
                       t.median / base, "min_over_dot_product_attention":
                       t.min / times[base_name].min,
                       "max_abs_diff": float(np.max(np.abs(outs[name] - outs[base_name])))}
                for name, t in times.items()}}


def layout_speed(n_in: int = 768, n_out: int = 3072, repeats: int = 41,
                 torch_peers: bool = True) -> dict:
    """One row times a weight, as a batch-1 decode step does for every weight: stored
    (in, out) (GPT-2's Conv1D, flax's Dense kernel) against (out, in) (nn.Linear; our decode
    weights on CPU). Each time over the (in, out) product's in the same framework."""
    w = jax.random.normal(jax.random.key(0), (n_in, n_out)) * 0.02
    w_t = jnp.asarray(np.ascontiguousarray(np.asarray(w).T))     # (out, in), its own buffer
    x = jax.random.normal(jax.random.key(1), (1, n_in))
    in_out = jax.jit(lambda x, w: x @ w)
    out_in = jax.jit(lambda x, w: (w @ x[0])[None])
    fns = {"jax (in, out)": lambda: in_out(x, w), "jax (out, in)": lambda: out_in(x, w_t)}
    same = bool(np.allclose(fns["jax (in, out)"](), fns["jax (out, in)"](), atol=1e-5))
    if torch_peers:
        import torch
        tw, tw_t, tx = (torch.from_numpy(np.asarray(a).copy()) for a in (w, w_t, x))
        tb = torch.zeros(n_out)
        fns["torch Conv1D addmm (in, out)"] = lambda: torch.addmm(tb, tx, tw)
        fns["torch nn.Linear (out, in)"] = lambda: torch.nn.functional.linear(tx, tw_t, tb)
    times = time_calls(fns, repeats=repeats, warmup=2)
    rows = {}
    for name, t in times.items():
        ref = times["jax (in, out)" if name.startswith("jax") else
                    "torch Conv1D addmm (in, out)"]
        base, min_base = ref.median, ref.min
        rows[name] = {**timing_row(t), "time_over_in_out": t.median / base,
                      "min_over_in_out": t.min / min_base}
    return {"config": {"rows": 1, "in": n_in, "out": n_out, "dtype": "float32"},
            "products": rows, "same_result": same}


def dropout_speed(cfg: GPTConfig, batch: int = 4, seq: int = 128, rate: float = 0.1,
                  repeats: int = 3) -> dict:
    """A training forward + backward (loss and gradients) with dropout `rate` against none:
    dropout adds its masks and, as jax.nn.dot_product_attention has no dropout, sends
    attention down the explicit softmax path."""
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, cfg.n_real_vocab)
    fns = {}
    for name, c in (("dropout 0", cfg.replace(dropout=0.0)),
                    (f"dropout {rate}", cfg.replace(dropout=rate))):
        grad = jax.jit(jax.value_and_grad(functools.partial(loss_fn, cfg=c)))
        key = jax.random.key(2)
        fns[name] = functools.partial(grad, params, tokens=tokens, dropout_key=key)
    times = time_calls(fns, repeats=repeats, warmup=1)
    base = times["dropout 0"].median
    return {"config": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "batch": batch,
                       "seq": seq},
            "steps": {name: {**timing_row(t, batch * seq), "time_over_no_dropout":
                             t.median / base, "min_over_no_dropout":
                             t.min / times["dropout 0"].min} for name, t in times.items()}}


def _now() -> float:
    import time
    return time.perf_counter()
