"""Section "decode": greedy decoding tokens/s of generate() against our no-cache recompute, the
same decoder op by op, Hugging Face PyTorch generate(), and the read-bandwidth floor."""
from __future__ import annotations

import time

import jax
import numpy as np

from gpt_jax.lab.bench.compiled import (MODES, compile_unavailable, first_call, skip_row,
                                        static_generate)
from gpt_jax.lab.bench.harness import Context, Result, ratio_row, read_probe, result_from_timing
from gpt_jax.lab.bench.peers import have_peers, params_to_hf
from gpt_jax.generation.step import weight_bytes as stored_bytes
from gpt_jax.generation.decoding import compile_generate, generate, generate_uncached
from gpt_jax.generation.loop import DECODER
from gpt_jax.model.gpt import count_params, init_params
from gpt_jax.utils.timing import compile_seconds, time_call, time_calls


PEER_LABELS = {"hf": "HF PyTorch generate",
               "static": "HF PyTorch static cache + torch.compile generate"}
RATIO_LABELS = {"hf": "HF PyTorch", "static": "HF torch.compile"}


def static_peer(ctx: Context, hf, prompts, N: int, tag: str, rows: list,
                section: str = "decode") -> dict:
    """{"static": (tokens(), timed fn, config)}: Hugging Face generate() through a StaticCache
    with its decode forward compiled (compiled.static_generate), compiled here by a first call
    whose seconds go in the config; {} with a "skipped" row (the reason) in rows where
    torch.compile cannot run or fails."""
    reason = compile_unavailable(ctx)
    if reason is None:
        mode = ctx.options.get("compile_mode") or MODES[0]
        try:
            gen = static_generate(hf, mode, hf.device.type)
            box = {}
            seconds = first_call(lambda: box.setdefault("tokens", gen(prompts, N)))
            return {"static": (lambda: box["tokens"], lambda: gen(prompts, N),
                               {"compile_mode": mode, "cache": "StaticCache",
                                "first_call_s": seconds, "generate": gen})}
        except Exception as e:   # inductor's errors are many: each one is a skip, not a crash
            first = (str(e).strip().splitlines() or [""])[0][:300]
            reason = f"torch.compile failed: {type(e).__name__}: {first}"
    rows.append(skip_row(section, f"{PEER_LABELS['static']} {tag}", reason))
    return {}


def run(ctx: Context) -> list[Result]:
    """Greedy decoding tokens/s: our cached lax.scan decoder vs our jitted no-cache recompute vs
    Hugging Face PyTorch generate(use_cache=True), interleaved, at batch 1 and 8; the same
    decoder op by op (jit disabled: what compiling buys); the read-bandwidth floor at batch 1
    (all weights are read once per step). The option decode_references false leaves out the
    no-cache and op-by-op baselines (a suite that wants the decoder's own figures only)."""
    refs = ctx.options.get("decode_references", True)
    peers = have_peers(ctx, "decode")
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
        DECODER.weights(params, cfg)           # laid out first: compile_s is compilation only
        t0 = time.perf_counter()
        ours, args = compile_generate(params, cfg, prompts, N, temperature=0)
        compile_s = time.perf_counter() - t0
        tokens, pad = args.tokens, args.pad     # left-padded, as generate() places them
        fns = {"ours": lambda: ours(*args)}
        narrow = {}                             # compressed decode weights, timed alongside
        if refs:
            unc, unc_compile_s = compile_seconds(generate_uncached, params, tokens, pad,
                                                 cfg=cfg, max_new_tokens=n_uncached)
            fns["uncached"] = lambda: unc(params, tokens, pad)
            for fmt in ("bfloat16", "int8"):
                if fmt != cfg.dtype:
                    fn, fargs = compile_generate(params, cfg, prompts, N, temperature=0,
                                                 weights=fmt)
                    narrow[fmt] = (fn, fargs)
                    fns[fmt] = lambda fn=fn, fargs=fargs: fn(*fargs)
        if B == 1:  # the read floor, timed between the same runs (bandwidth drifts by minutes)
            fns["read"], read_bytes = read_probe(ctx)
        conf = {"preset": name, "batch": B, "prompt": P, "new_tokens": N, "dtype": cfg.dtype,
                "greedy": True, "torch_threads": torch.get_num_threads() if hf is not None else None}
        peer_rows, peer_conf = [], {}
        if hf is not None:
            ids = torch.from_numpy(prompts).to(hf.device)

            def hf_generate():
                with torch.inference_mode():
                    return hf.generate(ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                       use_cache=True)
            candidates = {"hf": (lambda: hf_generate()[:, P:].cpu().numpy(), hf_generate, {})}
            candidates.update(static_peer(ctx, hf, prompts, N, f"b{B}", peer_rows))
            want = np.asarray(ours(*args))
            for key, (tokens_of, fn, extra) in candidates.items():
                # A peer is timed only where its greedy tokens equal ours: else it decodes
                # something else and its speed is no comparison.
                same = float((tokens_of() == want).mean())
                c = {**conf, **{k: v for k, v in extra.items() if k != "generate"},
                     "greedy_tokens_equal_ours": same}
                if same < 1.0:
                    peer_rows.append(skip_row("decode", f"{PEER_LABELS[key]} b{B}",
                                              f"greedy tokens differ from ours ({same:.1%} "
                                              f"equal): not timed", c))
                else:
                    fns[key], peer_conf[key] = fn, c
        t = time_calls(fns, ctx.repeats, ctx.warmup)
        row = result_from_timing("decode", f"ours cached scan b{B}", t["ours"], work=B * N,
                                 metric="tokens/s", unit="tokens/s", config=conf,
                                 compile_s=compile_s)
        rows.append(row)
        ref_tokens, nrows = np.asarray(ours(*args)), {}
        for fmt, (fn, fargs) in narrow.items():
            same = float((np.asarray(fn(*fargs)) == ref_tokens).mean())
            nrow = result_from_timing(
                "decode", f"ours cached scan {fmt} weights b{B}", t[fmt], work=B * N,
                metric="tokens/s", unit="tokens/s",
                config={**conf, "weights": fmt, "greedy_tokens_equal_ours": same,
                        "weight_bytes_per_token": stored_bytes(fargs.weights)})
            rows += [nrow, ratio_row("decode", f"ours {fmt} weights / ours b{B}", nrow, row,
                                     conf)]
            nrows[fmt] = nrow
        if refs:
            rows.append(result_from_timing(
                "decode", f"ours uncached recompute b{B}", t["uncached"], work=B * n_uncached,
                metric="tokens/s", unit="tokens/s", config={**conf, "new_tokens": n_uncached},
                compile_s=unc_compile_s))
            with jax.disable_jit():
                eager = time_call(lambda: generate(params, cfg, prompts, n_eager, temperature=0),
                                  max(1, min(ctx.repeats, 2)), 1)
            eager_row = result_from_timing("decode", f"ours op-by-op (jit disabled) b{B}",
                                           eager, work=B * n_eager, metric="tokens/s",
                                           unit="tokens/s", config={**conf, "new_tokens": n_eager})
            rows += [eager_row, ratio_row("decode", f"ours jitted / op-by-op b{B}", row,
                                          eager_row, conf)]
        rows += peer_rows
        for key, c in peer_conf.items():
            cs = max(c["first_call_s"] - t[key].median, 0.0) if "first_call_s" in c else None
            peer = result_from_timing("decode", f"{PEER_LABELS[key]} b{B}", t[key],
                                      work=B * N, metric="tokens/s", unit="tokens/s",
                                      config=c, compile_s=cs)
            short = RATIO_LABELS[key]
            rows += [peer, ratio_row("decode", f"ours / {short} b{B}", row, peer, conf)]
            rows += [ratio_row("decode", f"ours {fmt} weights / {short} b{B}", nrow, peer,
                               conf) for fmt, nrow in nrows.items()]
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
            for fmt, nrow in nrows.items():  # the floor for the bytes these weights stream
                nbytes = nrow.config["weight_bytes_per_token"]
                rows.append(Result("decode", f"ours cached scan {fmt} weights b1",
                                   "fraction of bandwidth floor",
                                   nrow.value / (floor.value * weight_bytes / nbytes),
                                   "fraction", {**bw_conf, "weight_bytes_per_token": nbytes}))
    return rows
