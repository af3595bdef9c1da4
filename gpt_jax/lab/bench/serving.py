"""Section "serve": the figures a server cares about, ours against Hugging Face PyTorch, timed
interleaved in one process: beam search with 4 beams, and for greedy decoding of one prompt the
time to first token (TTFT: generate() of one token, all host work included), the time per
output token (TPOT: (generate(N) - generate(1)) / (N - 1), of the fastest repeats, which load
spikes touch least), the prefill alone (a forward pass over the prompt that fills the cache)
and one decode step alone (one token over a full cache), with compile times (ours: lower +
compile; the PyTorch peer compiles nothing, its config holds its first calls' seconds instead).
Streaming and early-exit rows come from gpt_jax/lab/bench/streaming.py (issue 21 items 3 and 5):
its run(ctx) is appended to this section's."""
from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.generation.beam import BEAMS, beam_args
from gpt_jax.lab.bench.harness import Context, Result, ratio_row, result_from_timing
from gpt_jax.lab.bench.peers import have_peers, params_to_hf
import gpt_jax.generation.step as decode
from gpt_jax.generation.step import decode_step
from gpt_jax.generation.decoding import compile_generate
from gpt_jax.generation.loop import DECODER
from gpt_jax.model.gpt import init_params
from gpt_jax.utils.timing import time_calls
from gpt_jax.model.tokenizer import EOT_ID

import gpt_jax.lab.bench.streaming as streaming
from gpt_jax.lab.bench.compiled import skip_row
from gpt_jax.lab.bench.decoding import static_peer

NUM_BEAMS = 4
STATIC = "HF PyTorch static cache + torch.compile"


def _compiled(fn, *args):
    t0 = time.perf_counter()
    c = fn.lower(*args).compile()
    return c, time.perf_counter() - t0


def run(ctx: Context) -> list[Result]:
    name, cfg = ctx.model()
    P, N, NB = (8, 96, 8) if ctx.tiny else (32, 32, 24)  # prompt, greedy tokens, beam tokens
    params = init_params(cfg, jax.random.key(0))
    prompt = np.random.default_rng(0).integers(0, cfg.n_real_vocab, (1, P))
    peers = have_peers(ctx, "serve")
    hf = params_to_hf(params, cfg) if peers else None
    eos = EOT_ID if EOT_ID < cfg.n_real_vocab else None
    conf = {"preset": name, "batch": 1, "prompt": P, "dtype": cfg.dtype}
    fns, compile_s = {}, {}

    # ours: greedy generate() of N and of 1 token (TTFT), compiled ahead of time
    weights = DECODER.weights(params, cfg)
    for n in (1, N):
        t0 = time.perf_counter()
        fn, args = compile_generate(params, cfg, prompt, n, temperature=0)
        compile_s[f"ours gen{n}"] = time.perf_counter() - t0
        fns[f"ours gen{n}"] = lambda fn=fn, args=args: fn(*args)
    # ours: the prefill alone, and one decode step alone over a cache of P + N - 1 entries
    S = P + N - 1
    tokens = jnp.asarray(prompt, jnp.int32)
    pad = jnp.zeros((1,), jnp.int32)

    def prefill(params, tokens):           # generate()'s: a heads-major cache of S entries
        return decode.prefill(params, weights, cfg, tokens, pad, S)
    pre, compile_s["ours prefill"] = _compiled(jax.jit(prefill), params, tokens)
    cache = pre(params, tokens)[1]

    def one_step(weights, cache, tok):
        index = jnp.int32(S - 1)                       # the last entry: attention over all S
        return decode_step(weights, cfg, tok, index[None], jnp.ones((1, S), bool), cache, index)
    step, compile_s["ours step"] = _compiled(jax.jit(one_step), weights, cache,
                                             jnp.zeros((1,), jnp.int32))
    fns["ours prefill"] = lambda: pre(params, tokens)
    fns["ours step"] = lambda: step(weights, cache, jnp.zeros((1,), jnp.int32))

    # ours: beam search, NUM_BEAMS beams, the best hypothesis of NB new tokens
    bargs, bstatic = beam_args(params, cfg, prompt, NB, num_beams=NUM_BEAMS, eos_id=eos)
    beam, compile_s["ours beam"] = _compiled_beam(bargs, bstatic)
    fns["ours beam"] = lambda: beam(*bargs)

    static_rows, static_conf = [], None
    if hf is not None:
        import torch
        ids = torch.from_numpy(prompt).to(hf.device)
        mask = torch.ones_like(ids)

        def hf_gen(n):
            with torch.inference_mode():
                return hf.generate(ids, attention_mask=mask, max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False, use_cache=True,
                                   pad_token_id=eos)

        def hf_prefill():
            with torch.inference_mode():
                return hf(ids, use_cache=True)

        with torch.inference_mode():
            past = hf(torch.zeros((1, S - 1), dtype=torch.long, device=hf.device),
                      use_cache=True).cache
        one = torch.zeros((1, 1), dtype=torch.long, device=hf.device)

        def hf_step():
            # one token over S - 1 cached entries; the cache grows by one in place, so drop
            # that entry again (a DynamicCache) to time the same step every call
            with torch.inference_mode():
                out = hf(one, cache=past, use_cache=True)
            past.crop(-1)
            return out

        def hf_beam():
            with torch.inference_mode():
                return hf.generate(ids, attention_mask=mask, max_new_tokens=NB,
                                   num_beams=NUM_BEAMS, do_sample=False, use_cache=True,
                                   eos_token_id=eos, pad_token_id=eos)
        peer = {"hf gen1": lambda: hf_gen(1), f"hf gen{N}": lambda: hf_gen(N),
                "hf prefill": hf_prefill, "hf step": hf_step, "hf beam": hf_beam}
        # HF generate() through a StaticCache with its decode forward compiled: compiled by
        # its first call (N tokens, so that the 1-token call reuses its cache size); timed
        # only where its greedy tokens equal ours
        static = static_peer(ctx, hf, prompt, N, "b1", static_rows, "serve")
        if static:
            tokens_of, gen_n, extra = static["static"]
            same = float((tokens_of() == np.asarray(fns[f"ours gen{N}"]())).mean())
            static_conf = {**extra, "greedy_tokens_equal_ours": same}
            if same < 1.0:
                static_rows.append(skip_row("serve", f"{STATIC} b1", f"greedy tokens differ "
                                            f"from ours ({same:.1%} equal): not timed",
                                            static_conf))
            else:
                gen = extra["generate"]
                fns.update({"static gen1": lambda: gen(prompt, 1), f"static gen{N}": gen_n})
        for k, f in peer.items():   # a cold call, timed: the peer's start-up cost
            t0 = time.perf_counter()
            f()
            compile_s[k] = time.perf_counter() - t0
        fns.update(peer)
        hf_new = hf_beam()[0, P:].cpu().numpy()   # shorter where its best hypothesis ended early
        hf_new = np.pad(hf_new, (0, NB - len(hf_new)), constant_values=-1 if eos is None else eos)
        conf_beam_eq = float(np.mean(np.asarray(beam(*bargs)[0])[0] == hf_new))
        conf["torch_threads"] = torch.get_num_threads()

    print(f"[bench] serve: compiled in {sum(compile_s.values()):.0f}s; timing "
          f"{len(fns)} calls x {ctx.repeats} repeats", file=sys.stderr)
    t = time_calls(fns, ctx.repeats, ctx.warmup)
    rows: list[Result] = []

    def seconds(key, label, metric, config, cs=None):
        tm = t[key]
        return Result("serve", label, metric, 1e3 * tm.median, "ms", config, median=tm.median,
                      min=tm.min, max=tm.max, repeats=len(tm.times), compile_s=cs)

    for who, label in [("ours", "ours"), ("hf", "HF PyTorch")] if hf is not None else \
            [("ours", "ours")]:
        ours = who == "ours"
        c = {**conf, "new_tokens": N, "greedy": True}
        if not ours:
            c["first_call_s"] = {k: compile_s[k] for k in compile_s if k.startswith("hf")}
        cs = (lambda k: compile_s[k]) if ours else (lambda k: None)
        ttft = seconds(f"{who} gen1", f"{label} time to first token b1", "TTFT", c,
                       cs(f"{who} gen1"))
        tpot = (t[f"{who} gen{N}"].min - t[f"{who} gen1"].min) / (N - 1)
        if tpot <= 0:   # host noise above N - 1 tiny steps (--tiny): the one step's time
            tpot, c = t[f"{who} step"].median, {**c, "tpot_from": "decode step"}
        rows += [ttft,
                 Result("serve", f"{label} time per output token b1", "TPOT", 1e3 * tpot, "ms", c,
                        repeats=len(t[f"{who} gen1"].times), compile_s=cs(f"{who} gen{N}")),
                 seconds(f"{who} prefill", f"{label} prefill {P} tokens b1", "prefill", c,
                         cs(f"{who} prefill")),
                 seconds(f"{who} step", f"{label} decode step over {S} entries b1",
                         "decode step", c, cs(f"{who} step"))]
    rows += static_rows
    if f"static gen{N}" in t:
        c = {**conf, "new_tokens": N, "greedy": True, **static_conf}
        c.pop("generate")
        c["first_call_s"] = {"static gen{N}".format(N=N): c["first_call_s"]}
        ttft = seconds("static gen1", f"{STATIC} time to first token b1", "TTFT", c)
        tpot = (t[f"static gen{N}"].min - t["static gen1"].min) / (N - 1)
        rows += [ttft, Result("serve", f"{STATIC} time per output token b1", "TPOT",
                              1e3 * tpot, "ms", c, repeats=len(t["static gen1"].times),
                              compile_s=max(c["first_call_s"][f"static gen{N}"]
                                            - t[f"static gen{N}"].median, 0.0))]
        for what, value in (("time to first token", ttft.value), ("time per output token",
                                                                   1e3 * tpot)):
            o = next(r for r in rows if r.name == f"ours {what} b1")
            rows.append(Result("serve", f"HF torch.compile / ours {what} b1",
                               f"{o.metric} ratio", value / o.value, "x", conf))
    bconf = {**conf, "num_beams": NUM_BEAMS, "new_tokens": NB, "length_penalty": 1.0,
             "early_stopping": False, "eos_id": eos}
    ours_beam = result_from_timing("serve", f"ours beam search {NUM_BEAMS} beams b1",
                                   t["ours beam"], work=NB, metric="new tokens/s",
                                   unit="tokens/s", config=bconf,
                                   compile_s=compile_s["ours beam"])
    rows.append(ours_beam)
    if hf is not None:
        hf_b = result_from_timing("serve", f"HF PyTorch beam search {NUM_BEAMS} beams b1",
                                  t["hf beam"], work=NB, metric="new tokens/s", unit="tokens/s",
                                  config={**bconf, "best_tokens_equal_ours": conf_beam_eq})
        rows += [hf_b, ratio_row("serve", f"ours / HF PyTorch beam search {NUM_BEAMS} beams b1",
                                 ours_beam, hf_b, bconf)]
        for what in ("time to first token", "time per output token"):
            o = next(r for r in rows if r.name == f"ours {what} b1")
            h = next(r for r in rows if r.name == f"HF PyTorch {what} b1")
            rows.append(Result("serve", f"HF PyTorch / ours {what} b1", f"{o.metric} ratio",
                               h.value / o.value, "x", conf))
    rows += streaming.run(ctx)
    return rows


def _compiled_beam(args, static):
    t0 = time.perf_counter()
    c = BEAMS.lower(*args, **static).compile()
    return c, time.perf_counter() - t0
