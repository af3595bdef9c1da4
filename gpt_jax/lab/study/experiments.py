"""The chapter's claims as measurements: each function returns plain numbers (and Runs) that
report.py draws and writes. Sizes come from a Scale (full, or tiny for tests)."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.data.textstats import CorpusStats, sample_figures
from gpt_jax.data.tokens import BatchSampler
from gpt_jax.evaluation.scoring import log_probs
from gpt_jax.generation.decoding import compile_generate, generate, generate_uncached
from gpt_jax.generation.prompts import left_pad
from gpt_jax.lab.study.runs import Run, train
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import GPT, count_params, init_params
from gpt_jax.utils.timing import block


@dataclass(frozen=True)
class Scale:
    """How big every experiment is. FULL fits ~15 minutes on 2 CPU cores; TINY, seconds."""
    n_embd: int = 64
    n_head: int = 2
    n_layer: int = 4            # the default model (and the tied / untied / mask runs)
    block_size: int = 64
    batch_size: int = 4
    steps: int = 300            # the default model's training (also untied and bidirectional)
    lr: float = 3e-3
    warmup: int = 30
    norm_depths: tuple = (3, 12, 24)
    norm_lrs: tuple = (1e-3, 1e-2, 1e-1)
    norm_steps: int = 50
    norm_warmup: int = 25       # the "with warm-up" runs' linear warm-up
    eval_iters: int = 8
    samples: int = 8            # samples per generation setting
    new_tokens: int = 48
    kv_block: int = 512         # the KV-cache timing model's context
    kv_lengths: tuple = (2, 8, 32, 128, 256, 496)
    kv_repeats: int = 3


FULL = Scale()
TINY = Scale(n_embd=32, n_layer=2, block_size=32, batch_size=2, steps=12, warmup=2,
             norm_depths=(2,), norm_lrs=(3.0,), norm_steps=4, norm_warmup=2,
             eval_iters=2, samples=2, new_tokens=8, kv_block=64, kv_lengths=(24,),
             kv_repeats=1)


def model_config(s: Scale, **switches) -> GPTConfig:
    return GPTConfig(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd,
                     block_size=s.block_size, **switches)


# -- Pre-LN vs Post-LN ---------------------------------------------------------------------------

def norm_sweep(s: Scale, data, bar=None, runs=None) -> list[Run]:
    """Every (norm, depth, warm-up, lr): a short run from the same init seed and batches,
    appended to `runs` as each ends (a caller's list survives an interruption)."""
    runs = [] if runs is None else runs
    for depth in s.norm_depths:
        for warmup in (0, s.norm_warmup):
            for norm in ("pre", "post"):
                for lr in s.norm_lrs:
                    cfg = GPTConfig(n_layer=depth, n_head=s.n_head, n_embd=s.n_embd,
                                    block_size=s.block_size, norm=norm)
                    runs.append(train(cfg, data, steps=s.norm_steps, lr=lr, warmup=warmup,
                                      batch_size=s.batch_size, eval_iters=0,
                                      label=f"{norm}-LN L={depth} wu={warmup} lr={lr:g}",
                                      bar=bar))
    return runs


def trains(run: Run, margin: float = 2.0) -> bool:
    """A run trains when it neither blew up nor stalled: its final loss is `margin` nats below
    its first (a healthy short run here falls 3+ nats, to the unigram level and below)."""
    return not run.diverged and run.final() < run.losses[0] - margin


def failing_lr(runs: list[Run], norm: str, depth: int, warmup: int):
    """(smallest lr of the sweep at which this model fails, largest at which it trains)."""
    mine = sorted((r for r in runs if r.cfg.norm == norm and r.cfg.n_layer == depth
                   and r.warmup == warmup), key=lambda r: r.lr)
    fail = next((r.lr for r in mine if not trains(r)), None)
    ok = [r.lr for r in mine if trains(r)]
    return fail, (max(ok) if ok else None)


# -- tied vs untied ------------------------------------------------------------------------------

def heads(s: Scale, data, tied: Run, bar=None) -> dict:
    """Parameters and val loss at equal steps, tied (the default model's run) vs untied."""
    untied_cfg = tied.cfg.replace(tie_embeddings=False)
    untied = train(untied_cfg, data, steps=s.steps, lr=s.lr, warmup=s.warmup,
                   batch_size=s.batch_size, eval_iters=s.eval_iters, label="untied", bar=bar)
    return {"tied": tied, "untied": untied, "params_tied": count_params(tied.cfg),
            "params_untied": count_params(untied_cfg)}


# -- the causal mask -----------------------------------------------------------------------------

def future_perturbation(params, cfg: GPTConfig, tokens, cut: int, key) -> float:
    """max |logit change| at positions < cut when every token from `cut` on is replaced by a
    random one. tokens (B, T). 0 exactly for a causal model."""
    other = tokens.at[:, cut:].set(jax.random.randint(key, tokens[:, cut:].shape, 0,
                                                      cfg.n_real_vocab))
    fwd = jax.jit(lambda p, t: GPT(cfg).apply({"params": p}, t))
    a, b = fwd(params, tokens), fwd(params, other)
    return float(jnp.max(jnp.abs(a[:, :cut] - b[:, :cut])))


def prefix_only_loss(params, cfg: GPTConfig, tokens) -> float:
    """Mean next-token loss when position t is predicted from tokens[:, :t+1] alone, every one
    of them seeing every other (as when generating from a bidirectional model: the answer is
    not there yet). tokens (B, T + 1). One forward per position."""
    x, T = tokens[:, :-1], tokens.shape[1] - 1
    model = GPT(cfg)

    def at(t):
        mask = (jnp.arange(T) <= t)[None, None, None, :]                 # keys <= t
        logits = model.apply({"params": params}, x, mask=mask, logits_at=t)[:, 0]
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, tokens[:, t + 1, None], axis=-1)[:, 0]
    return float(jnp.mean(jax.lax.map(at, jnp.arange(T))))


def mask_experiment(s: Scale, data, causal_run: Run, bar=None) -> dict:
    """Future tokens change no earlier logit of the causal model; a bidirectional model trained
    on the same next-token task drives its train loss toward zero by reading the answer, and
    predicts worse than the causal one once the answer is not there (generation)."""
    bi = train(causal_run.cfg.replace(causal=False), data, steps=s.steps, lr=s.lr,
               warmup=s.warmup, batch_size=s.batch_size, eval_iters=s.eval_iters,
               label="bidirectional", keep_params=True, bar=bar)
    val = data_val_batch(s, data)
    cut = s.block_size // 2
    key = jax.random.key(7)
    out = {"causal": causal_run, "bidirectional": bi, "cut": cut,
           "perturb_causal": future_perturbation(causal_run.params, causal_run.cfg,
                                                 jnp.asarray(val[:, :-1]), cut, key),
           "perturb_bidirectional": future_perturbation(bi.params, bi.cfg,
                                                        jnp.asarray(val[:, :-1]), cut, key)}
    if not bi.diverged:
        out["bi_prefix_loss"] = prefix_only_loss(bi.params, bi.cfg, jnp.asarray(val))
        prompts, pad = left_pad([list(r[:8]) for r in val], bi.cfg)
        toks = generate_uncached(bi.params, prompts, pad, cfg=bi.cfg,
                                 max_new_tokens=s.new_tokens)
        out["bi_samples"] = [list(map(int, r)) for r in np.asarray(toks)]
    return out


def data_val_batch(s: Scale, data) -> np.ndarray:
    """int32 (B, block_size + 1) windows of the val split, fixed (seed 0)."""
    sampler = BatchSampler(data, block_size=s.block_size, batch_size=s.batch_size, seed=0)
    return sampler.eval_batches("val", 0, 1)[0]


# -- generation strategies -----------------------------------------------------------------------

STRATEGIES = {"greedy": dict(temperature=0.0), "T=0.7": dict(temperature=0.7),
              "T=1.0": dict(temperature=1.0), "T=1.3": dict(temperature=1.3),
              "top-k 40": dict(top_k=40), "top-p 0.9": dict(top_p=0.9),
              "T=0.8 top-k 40 top-p 0.9": dict(temperature=0.8, top_k=40, top_p=0.9)}


def repetition_rate(tokens, n: int = 4) -> float:
    """Share of a sample's n-grams that occurred earlier in the same sample (greedy loops)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(samples, n: int) -> float:
    """Distinct n-grams over all n-grams of all samples together (diversity)."""
    grams = [tuple(t[i:i + n]) for t in samples for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def strategies(s: Scale, params, cfg: GPTConfig, data, enc, seed: int = 0) -> dict:
    """Per strategy: repetition (4-grams), distinct-1/2, share of corpus words, and the model's
    mean log-likelihood per sampled token given the prompt; prompts are val-set windows."""
    val = np.asarray(data.splits["val"])
    corpus = CorpusStats.from_text(enc.decode(list(map(int, data.splits["train"][:2_000_000]))))
    rng = np.random.default_rng(seed)
    P = 16
    starts = rng.integers(0, len(val) - P, size=s.samples)
    prompts = [list(map(int, val[a:a + P])) for a in starts]
    rows = {}
    for name, kw in STRATEGIES.items():
        new = np.asarray(generate(params, cfg, prompts, max_new_tokens=s.new_tokens,
                                  key=seed, **kw))
        samples = [list(map(int, r)) for r in new]
        full = np.asarray([p + t for p, t in zip(prompts, samples)], np.int32)
        mask = np.zeros((len(full), full.shape[1] - 1), bool)
        mask[:, P - 1:] = True                                 # the sampled tokens only
        ll = np.asarray(log_probs(params, cfg, full, mask)).sum() / mask.sum()
        figs = sample_figures([enc.decode(t) for t in samples], corpus)
        rows[name] = {"repetition": float(np.mean([repetition_rate(t) for t in samples])),
                      "distinct_1": distinct_n(samples, 1), "distinct_2": distinct_n(samples, 2),
                      "in_corpus": figs["in_corpus"], "loglik": float(ll),
                      "example": enc.decode(prompts[0]) + " || " + enc.decode(samples[0])}
    return rows


# -- the KV cache --------------------------------------------------------------------------------

def kv_cache_timing(s: Scale, seed: int = 0) -> dict:
    """Seconds per new token, greedy, one prompt of 8 tokens, for each generated length: the
    cached decoder (generate, compiled ahead) vs recomputing the whole sequence each token
    (generate_uncached). Random weights: time does not depend on their values. The two
    programs are timed interleaved, each after one warm-up call."""
    cfg = GPTConfig(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd,
                    block_size=s.kv_block)
    params = init_params(cfg, jax.random.key(seed))
    prompt = [[int(x) for x in np.random.default_rng(seed).integers(0, 50257, 8)]]
    tokens, pad = left_pad(prompt, cfg)
    rows = []
    for n in s.kv_lengths:
        fn, args = compile_generate(params, cfg, prompt, max_new_tokens=n, temperature=0)
        unc = lambda: generate_uncached(params, tokens, pad, cfg=cfg, max_new_tokens=n)
        same = bool(np.array_equal(np.asarray(fn(*args)), np.asarray(unc())))
        times = {"cached": [], "recomputed": []}
        for _ in range(s.kv_repeats):
            for name, f in (("cached", lambda: fn(*args)), ("recomputed", unc)):
                t0 = time.perf_counter()
                block(f())
                times[name].append(time.perf_counter() - t0)
        rows.append({"length": tokens.shape[1] + n,
                     "new_tokens": n, "same_tokens": same,
                     **{f"{k}_s_per_token": float(np.median(v)) / n for k, v in times.items()}})
    return {"cfg": cfg, "rows": rows}


def crossover(rows: list[dict]):
    """The first length at which the cache is faster per token (None: never in the range)."""
    return next((r["length"] for r in rows
                 if r["cached_s_per_token"] < r["recomputed_s_per_token"]), None)


def is_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
