"""Pre-LN vs Post-LN trained as the papers ran them: does Post-LN need warm-up, does Pre-LN
train deep stacks more easily, and what does GPT-2's init change?

Three arms (probe.ARMS): Pre-LN with GPT-2's init (GPT-2 itself); Post-LN as Vaswani et al.
2017 / Xiong et al. 2020 ran it (Xavier init, no residual scaling, no final LayerNorm); Post-LN
with GPT-2's init (whose 1/sqrt(2L) residual scaling is a Post-LN stabiliser, as in Admin).
Each at L = 24 and at L = 6 (the control), with the original Transformer's optimiser: Adam
(b1 0.9, b2 0.98, eps 1e-9), no gradient clipping, no weight decay, constant lr after an
optional linear warm-up. No run stops early: a spike or a NaN is recorded and the run goes on.

Cost: the 12 runs of one (arm, depth) (lrs x warm-ups x seeds) are one vmapped train step,
compiled once, with lr a traced per-run argument; on CPU 12 runs in one step cost about what 12
sequential runs do, without 12 compiles.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gpt_jax.data as data_lib
from gpt_jax.lab.study.probe import arm_config, init_stacked
from gpt_jax.lab.study.vocab import unigram_loss
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import GPT
from gpt_jax.train.loss import loss_fn

__all__ = ["FULL", "TINY", "Settings", "cells", "measure", "section", "spike"]


@dataclass(frozen=True)
class Settings:
    depths: tuple = (24, 6)
    arms: tuple = ("pre-gpt2", "post-xavier", "post-gpt2")
    # 3e-4 left a 24-layer net of width 32 1.5 nats above unigram after 80 steps; 3e-3 is
    # where a no-warm-up Post-LN would be expected to struggle first
    lrs: tuple = (3e-3, 1e-3)
    warmups: tuple = (0, 100)
    seeds: tuple = (0, 1, 2)
    steps: int = 300
    n_embd: int = 32
    n_head: int = 2
    block_size: int = 64
    batch_size: int = 8
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-9
    eval_batches: int = 8          # val batches per run for the final loss
    smooth: int = 10               # moving-average window of the spike measure (steps)
    stuck: float = 0.1             # a final loss within this of unigram (nats) has not learned


FULL = Settings()
TINY = Settings(depths=(6,), arms=("pre-gpt2", "post-xavier"), lrs=(1e-3,), warmups=(0, 5),
                seeds=(0, 1), steps=12, n_embd=32, n_head=2, block_size=32, batch_size=4,
                eval_batches=2, smooth=3)


def lr_at(lr: float, warmup: int, step: int) -> float:
    """Constant lr after a linear warm-up from lr / warmup over `warmup` steps (0: none)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup else lr


def spike(losses, window: int) -> float:
    """The largest spike of a loss curve: the largest rise of its `window`-step moving average
    above the lowest value that average had reached before (0 for a curve that never rises;
    inf if any loss is non-finite). A moving average, because single-batch losses at batch 8
    are noisy by a few tenths of a nat.
    """
    x = np.asarray(losses, np.float64)
    if not np.all(np.isfinite(x)):
        return math.inf
    m = np.convolve(x, np.ones(window) / window, mode="valid")
    return float(np.max(m - np.minimum.accumulate(m)))


def make_fns(cfg: GPTConfig, s: Settings):
    """(init, step, evaluate), each jit(vmap over runs), in the scan_layers layout:
    init(key data (R, 2)) -> (params, adam state); step(params, state, tokens (R, B, T + 1),
    lr (R,)) -> (params, state, loss (R,)); evaluate(params, tokens (R, N, B, T + 1)) -> (R,)."""
    model = GPT(cfg, scan_layers=True)
    adam = optax.scale_by_adam(b1=s.betas[0], b2=s.betas[1], eps=s.eps)
    loss = lambda p, tokens: loss_fn(p, cfg, tokens, model=model)

    def init(key_data):
        params = init_stacked(cfg, jax.random.wrap_key_data(key_data))
        return params, adam.init(params)

    def step(params, state, tokens, lr):
        value, grads = jax.value_and_grad(loss)(params, tokens)
        updates, state = adam.update(grads, state, params)
        params = jax.tree_util.tree_map(lambda p, u: p - lr * u, params, updates)
        return params, state, value

    evaluate = lambda params, tokens: jnp.mean(jax.lax.map(lambda t: loss(params, t), tokens))
    return (jax.jit(jax.vmap(init)), jax.jit(jax.vmap(step), donate_argnums=(0, 1)),
            jax.jit(jax.vmap(evaluate)))


def train_group(cfg: GPTConfig, data, s: Settings, *, bar=None) -> list[dict]:
    """Every (lr, warm-up, seed) run of one config, trained together; per run its per-step
    train losses and final val loss. Seed k: init key(k) and the batches of
    BatchSampler(seed=k), the same in every (lr, warm-up) cell, so cells compare paired."""
    runs = list(itertools.product(s.lrs, s.warmups, s.seeds))
    init, step, evaluate = make_fns(cfg, s)
    samplers = {k: data_lib.BatchSampler(data, block_size=s.block_size,
                                         batch_size=s.batch_size, seed=k) for k in s.seeds}
    keys = np.stack([jax.random.key_data(jax.random.key(k)) for _, _, k in runs])
    params, state = init(keys)
    losses = np.zeros((s.steps, len(runs)))
    t0 = time.perf_counter()
    for t in range(s.steps):
        by_seed = {k: samplers[k].train_batch(t)[0] for k in s.seeds}          # (B, T + 1)
        tokens = np.stack([by_seed[k] for _, _, k in runs])                   # (R, B, T + 1)
        lr = np.asarray([lr_at(lr, w, t) for lr, w, _ in runs], np.float32)
        params, state, loss = step(params, state, tokens, lr)
        losses[t] = np.asarray(loss)
        if bar is not None:
            bar.update(1)
    seconds = time.perf_counter() - t0
    val = np.stack([_val_tokens(samplers[k], s) for _, _, k in runs])       # (R, N, B, T + 1)
    final = np.asarray(evaluate(params, val))
    return [{"lr": lr, "warmup": w, "seed": k, "val": float(final[i]),
             "losses": [round(float(x), 4) if math.isfinite(x) else None for x in losses[:, i]],
             "seconds": seconds / len(runs)} for i, (lr, w, k) in enumerate(runs)]


def _val_tokens(sampler, s: Settings) -> np.ndarray:
    """(N, B, T + 1) val windows of one seed's sampler (the same for every cell of that seed)."""
    return np.asarray(sampler.eval_batches("val", 0, s.eval_batches)).reshape(
        s.eval_batches, s.batch_size, s.block_size + 1)


def measure_group(s: Settings, data, arm: str, n_layer: int, *, bar=None, log=print) -> list:
    """train_group for one arm (a key of probe.ARMS) at one depth, at s's shape and vocab."""
    cfg = arm_config(arm, n_layer=n_layer, n_embd=s.n_embd, n_head=s.n_head,
                     block_size=s.block_size, vocab_size=int(data.meta["vocab_size"]))
    runs = train_group(cfg, data, s, bar=bar)
    log(f"norm {arm:12s} L={n_layer:2d}: {len(runs)} runs, "
        f"{runs[0]['seconds'] * len(runs) / s.steps:.2f} s/step for all of them")
    return runs


def cells(s: Settings, unigram: float, groups: dict) -> list[dict]:
    """Per (depth, arm, lr, warm-up) cell over its seeds: final val loss minus unigram (a
    run's own "unigram", on its val windows, where assemble set it; else `unigram`) (mean,
    sd over the finite seeds), how many seeds went non-finite, how many stayed within s.stuck
    nats of unigram (or above it), and the largest spike (see spike()). groups: {"arm/L": runs}.
    """
    out = []
    for L, arm, lr, w in itertools.product(s.depths, s.arms, s.lrs, s.warmups):
        runs = [r for r in groups[f"{arm}/{L}"] if r["lr"] == lr and r["warmup"] == w]
        finite = [r for r in runs if all(x is not None for x in r["losses"])
                  and math.isfinite(r["val"])]
        gap = np.asarray([r["val"] - r.get("unigram", unigram) for r in finite])
        spikes = [spike([math.nan if x is None else x for x in r["losses"]], s.smooth)
                  for r in runs]
        out.append({"n_layer": L, "arm": arm, "lr": lr, "warmup": w, "seeds": len(runs),
                    "final": float(gap.mean()) if len(gap) else math.nan,
                    "final_sd": float(gap.std(ddof=1)) if len(gap) > 1 else math.nan,
                    "nonfinite": len(runs) - len(finite),
                    "stuck": int(np.sum(gap > -s.stuck)),
                    "spike": float(max(spikes))})
    return out


def measure(settings: Settings, data, *, bar=None, log=print) -> dict:
    """Train every (arm, depth) group of settings and summarise it per cell.

    Args:
      settings: a Settings (FULL or TINY).
      data: the study's SmallVocab (TokenData-shaped; its size is the vocabulary).
      bar: an optional tqdm bar, advanced once per training step of a group.
      log: prints a line per group.

    Returns:
      {"settings", "unigram" (val, nats), "runs": {"arm/L": [per run: lr, warmup, seed, val,
      losses (None where non-finite), seconds]}, "cells": cells(...), "seconds"}, all
      JSON-serialisable (spike is inf for a cell with a non-finite seed).
    """
    s, t0 = settings, time.perf_counter()
    groups = {f"{arm}/{L}": measure_group(s, data, arm, L, bar=bar, log=log)
              for L in s.depths for arm in s.arms}
    return assemble(s, data, groups, time.perf_counter() - t0)


def assemble(s: Settings, data, groups: dict, seconds: float) -> dict:
    """measure's result from its groups (a driver may train the groups in separate processes;
    each group is deterministic on its own)."""
    uni = unigram_loss(data)
    # The unigram loss on exactly the val windows each seed was scored on: the gap then
    # measures what the model learned, not which 4096 val tokens its seed drew.
    p = (data.counts + 1) / (data.counts.sum() + data.size)
    for runs in groups.values():
        for r in runs:
            sampler = data_lib.BatchSampler(data, block_size=s.block_size,
                                            batch_size=s.batch_size, seed=r["seed"])
            r["unigram"] = float(-np.log(p[_val_tokens(sampler, s)[..., 1:]]).mean())
    return {"settings": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in s.__dict__.items()},
            "unigram": uni, "runs": groups, "cells": cells(s, uni, groups), "seconds": seconds}


def _cell(res: dict, **where) -> dict:
    return next(c for c in res["cells"] if all(c[k] == v for k, v in where.items()))


def verdicts(res: dict) -> dict:
    """The chapter's two claims at the deepest depth, each True / False, with the numbers:
    "post_needs_warmup": Post-LN (Xavier) without warm-up ends worse (by > 0.05 nats, or
    fails) than with it at the larger lr; "pre_deep_easier": Pre-LN (GPT-2 init) ends below
    Post-LN (Xavier) in every (lr, warm-up) cell."""
    s = res["settings"]
    L, lr, (w0, w1) = max(s["depths"]), max(s["lrs"]), (min(s["warmups"]), max(s["warmups"]))
    bad = lambda c: (c["final"] if math.isfinite(c["final"]) and not c["nonfinite"]
                     else math.inf)
    no_wu, wu = (_cell(res, n_layer=L, arm="post-xavier", lr=lr, warmup=w) for w in (w0, w1))
    pairs = [(_cell(res, n_layer=L, arm="pre-gpt2", lr=r, warmup=w),
              _cell(res, n_layer=L, arm="post-xavier", lr=r, warmup=w))
             for r in s["lrs"] for w in s["warmups"]]
    return {"post_needs_warmup": bad(no_wu) > bad(wu) + 0.05,
            "post_gap": bad(no_wu) - bad(wu),
            "pre_deep_easier": all(bad(p) < bad(q) for p, q in pairs),
            "depth": L, "lr": lr}


def _fmt(x: float, spec: str = "+.3f") -> str:
    return format(x, spec) if math.isfinite(x) else "—"


def section(res: dict, out_dir: str) -> str:
    """Draw norm.png into out_dir; return the markdown of the training sweep's section."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s, uni = res["settings"], res["unigram"]
    colors = {"pre-gpt2": "tab:blue", "post-xavier": "tab:red", "post-gpt2": "tab:orange"}
    fig, axes = plt.subplots(len(s["lrs"]), len(s["depths"]), squeeze=False, sharey=True,
                             figsize=(4.5 * len(s["depths"]), 3 * len(s["lrs"])))
    for (i, lr), (j, L) in itertools.product(enumerate(s["lrs"]), enumerate(s["depths"])):
        ax = axes[i][j]
        for arm in s["arms"]:
            for w in s["warmups"]:
                runs = [r for r in res["runs"][f"{arm}/{L}"] if r["lr"] == lr and r["warmup"] == w]
                x = np.asarray([[math.nan if v is None else v for v in r["losses"]] for r in runs])
                k = s["smooth"]
                m = np.convolve(np.mean(x, 0), np.ones(k) / k, mode="valid") - uni
                ax.plot(np.arange(len(m)) + k - 1, m, color=colors.get(arm), lw=1,
                        linestyle="-" if w else "--", label=f"{arm}, warm-up {w}")
        ax.axhline(0, color="gray", lw=0.8, linestyle=":")
        ax.set_title(f"L={L}, lr {lr:g}", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    axes[0][0].set_ylabel("train loss − unigram (nats)")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"mean of {len(s['seeds'])} seeds, {s['smooth']}-step moving average; "
                 f"dashed: no warm-up", fontsize=9)
    fig.tight_layout()
    fig.savefig(f"{out_dir}/norm.png", dpi=90)
    plt.close(fig)

    n = len(s["seeds"])
    lines = ["## Pre-LN vs Post-LN, trained", "",
             f"Width {s['n_embd']}, {s['n_head']} heads, block {s['block_size']}, batch "
             f"{s['batch_size']}, {s['steps']} steps, Adam (b1 {s['betas'][0]}, b2 "
             f"{s['betas'][1]}, eps {s['eps']:g}), no clipping, no weight decay, constant lr "
             f"after the warm-up; no early stop. Final: val loss ({s['eval_batches']} batches "
             f"per seed) minus the unigram loss of the same tokens (over the whole val split: "
             f"{uni:.3f}), mean ± sd over {n} seeds. Non-finite / stuck: "
             f"seeds whose loss went non-finite / that ended within {s['stuck']} nats of "
             f"unigram. Spike: the largest rise of the {s['smooth']}-step moving average of "
             f"the train loss above its running minimum (max over seeds).", "",
             "| L | arm | lr | warm-up | final − unigram | non-finite | stuck | largest spike |",
             "|---|---|---|---|---|---|---|---|"]
    for c in res["cells"]:
        lines.append(f"| {c['n_layer']} | {c['arm']} | {c['lr']:g} | {c['warmup']} | "
                     f"{_fmt(c['final'])} ± {_fmt(c['final_sd'], '.3f')} | {c['nonfinite']}/{n} "
                     f"| {c['stuck']}/{n} | {_fmt(c['spike'], '.2f')} |")
    v = verdicts(res)
    lines += ["", "![Pre-LN vs Post-LN training curves](norm.png)", "",
              f"At L={v['depth']} and lr {v['lr']:g}, \"Post-LN needs warm-up\" "
              f"{'held' if v['post_needs_warmup'] else 'did not hold'} (Post-LN without "
              f"warm-up ended {_fmt(v['post_gap'], '+.3f')} nats from its warmed-up runs), and "
              f"\"Pre-LN trains deep stacks more easily\" "
              f"{'held' if v['pre_deep_easier'] else 'did not hold'} (Pre-LN below Post-LN "
              f"in every cell: {v['pre_deep_easier']}).", ""]
    return "\n".join(lines)
