"""The Pre-LN / Post-LN init probe: per-layer gradient norms at initialisation against depth,
as Xiong et al. 2020 ("On Layer Normalization in the Transformer Architecture", Theorem 1 and
Fig. 3) state them, and the output change after one Adam step (Liu et al. 2020, "Understanding
the Difficulty of Training Transformers", the "amplification" behind Admin).

What the theory says, under Xavier init without residual scaling:
  - Pre-LN: the last layer's gradient norm scales like 1/sqrt(L) (the residual stream's
    variance grows with L and the final LayerNorm divides by it), and it is about the same in
    every layer of one net.
  - Post-LN: the last layer's gradient norm does not shrink with L (the LayerNorm after every
    block keeps the stream at unit scale), and it grows toward the top layers of one net; one
    Adam step moves the output more the deeper the net (Liu et al.), so a large first step
    without warm-up can throw it off.
GPT-2's init (N(0, 0.02), residual projections at 0.02/sqrt(2L)) makes every residual branch
small, which is what Admin and DeepNorm add to Post-LN to stabilise it: the probe shows what
that does to both nets. Deterministic: fixed seeds, fixed batches, no training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gpt_jax.data as data_lib
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import GPT
from gpt_jax.train.loss import loss_fn

__all__ = ["ARMS", "FULL", "TINY", "Settings", "arm_config", "init_stacked", "measure", "section"]

# The model variants, by name: (norm, init, final_ln). "post-xavier" is the 2017 Transformer's
# Post-LN as Xiong et al. analyse it (no LayerNorm after the last block, which already ends in
# one); "post-gpt2" is Post-LN with GPT-2's init and ln_f (at init ln_f(ln(.)) is ln(.)).
ARMS = {
    "pre-gpt2": ("pre", "gpt2", True),
    "post-xavier": ("post", "xavier", False),
    "post-gpt2": ("post", "gpt2", True),
    "pre-xavier": ("pre", "xavier", True),
}


def arm_config(arm: str, *, n_layer: int, n_embd: int, n_head: int, block_size: int,
               vocab_size: int) -> GPTConfig:
    """The GPTConfig of one arm (a key of ARMS) at the given shape.

    Raises:
      KeyError: an unknown arm.
    """
    norm, init, final_ln = ARMS[arm]
    return GPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=n_head, block_size=block_size,
                     vocab_size=vocab_size, norm=norm, init=init, final_ln=final_ln)


@dataclass(frozen=True)
class Settings:
    depths: tuple = (6, 12, 24, 48)
    arms: tuple = ("pre-xavier", "post-xavier", "pre-gpt2", "post-gpt2")
    n_embd: int = 64
    n_head: int = 4
    block_size: int = 64
    batch_size: int = 8
    seeds: tuple = (0, 1, 2, 3)    # each seed: its own init and its own batch
    adam_lr: float = 1e-3          # the one Adam step of the output-change probe


FULL = Settings()
TINY = Settings(depths=(6, 24), arms=("pre-xavier", "post-xavier"), n_embd=32, n_head=2,
                block_size=32, batch_size=4)


def init_stacked(cfg: GPTConfig, key) -> dict:
    """cfg's init (GPT-2's or Xavier, as cfg.init says) drawn straight into the scan_layers
    layout: the same initialisers as init_params, with a compile that does not grow with depth
    (the values differ from init_params(cfg, key)'s; their distribution does not)."""
    return GPT(cfg, scan_layers=True).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def probe_fn(cfg: GPTConfig, lr: float):
    """jit(vmap over seeds) of: (key data, tokens) -> per-layer gradient norm of the FFN's output
    matrix W2 (mlp.c_proj, Xiong et al.'s W^{2,l}) (L,), the loss, and the RMS change of the
    logits after one Adam step (Adam's first step moves every weight by about lr).
    key data: jax.random.key_data of the init key; tokens (B, T + 1)."""
    model = GPT(cfg, scan_layers=True)
    tx = optax.adam(lr, b1=0.9, b2=0.98, eps=1e-9)
    logits = lambda params, x: model.apply({"params": params}, x)         # (B, T, V)

    def one(key_data, tokens):
        params = init_stacked(cfg, jax.random.wrap_key_data(key_data))
        loss, g = jax.value_and_grad(lambda p: loss_fn(p, cfg, tokens, model=model))(params)
        w2 = g["h"]["mlp"]["c_proj"]["kernel"]                           # (L, 4C, C)
        per_layer = jnp.sqrt(jnp.sum(jnp.square(w2), axis=(1, 2)))      # (L,)
        update, _ = tx.update(g, tx.init(params), params)   # first step: -lr g / (|g| + eps)
        moved = optax.apply_updates(params, update)
        x = tokens[:, :-1]
        change = jnp.sqrt(jnp.mean(jnp.square(logits(moved, x) - logits(params, x))))
        return per_layer, loss, change
    return jax.jit(jax.vmap(one))


def probe_arm(cfg: GPTConfig, data, s: Settings) -> dict:
    """The probe of one config over s.seeds: per-layer W2 gradient norms (mean over seeds),
    the last layer's (mean and sd), the initial loss and the output change (means)."""
    keys = jnp.stack([jax.random.key_data(jax.random.key(seed)) for seed in s.seeds])
    tokens = np.stack([data_lib.BatchSampler(data, block_size=s.block_size,
                                             batch_size=s.batch_size, seed=seed).train_batch(0)[0]
                       for seed in s.seeds])                           # (S, B, T + 1)
    per_layer, loss, change = jax.device_get(probe_fn(cfg, s.adam_lr)(keys, jnp.asarray(tokens)))
    return {"grad": [float(x) for x in per_layer.mean(0)],
            "last": float(per_layer[:, -1].mean()), "last_sd": float(per_layer[:, -1].std()),
            "first": float(per_layer[:, 0].mean()),
            "loss": float(loss.mean()), "change": float(change.mean())}


def measure(settings: Settings, data, *, bar=None, log=print) -> dict:
    """Probe every arm of settings.arms at every depth of settings.depths.

    Args:
      settings: a Settings (FULL or TINY).
      data: TokenData-shaped data (the study's SmallVocab); its size is the vocabulary.
      bar: an optional tqdm bar, advanced once per (arm, depth).
      log: prints one line per (arm, depth).

    Returns:
      {"settings": ..., "rows": {arm: {str(L): probe_arm's dict}}, "theory": {arm: {str(L):
      predicted last-layer gradient relative to the shallowest depth}}} (JSON-serialisable).
      The theory is Xiong et al.'s for the Xavier arms: sqrt(L0 / L) for Pre-LN, 1 for Post-LN.
    """
    s = settings
    vocab = int(data.meta["vocab_size"])
    rows: dict = {}
    for arm in s.arms:
        rows[arm] = {}
        for L in s.depths:
            cfg = arm_config(arm, n_layer=L, n_embd=s.n_embd, n_head=s.n_head,
                             block_size=s.block_size, vocab_size=vocab)
            r = rows[arm][str(L)] = probe_arm(cfg, data, s)
            log(f"probe {arm:12s} L={L:2d}: last-layer |dL/dW2| {r['last']:.4f} "
                f"(first layer {r['first']:.4f}), output change {r['change']:.4f}")
            if bar is not None:
                bar.update(1)
    L0 = s.depths[0]
    theory = {"pre-xavier": {str(L): math.sqrt(L0 / L) for L in s.depths},
              "post-xavier": {str(L): 1.0 for L in s.depths}}
    return {"settings": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in s.__dict__.items()},
            "rows": rows, "theory": theory}


def relative_last(res: dict, arm: str) -> dict:
    """The last layer's gradient norm at each depth over the shallowest depth's, {str(L): x}."""
    rows = res["rows"][arm]
    first = rows[str(res["settings"]["depths"][0])]["last"]
    return {L: r["last"] / first for L, r in rows.items()}


def top_over_bottom(res: dict, arm: str, L) -> float:
    """Last layer's W2 gradient norm over the first layer's, in the L-layer net of `arm`."""
    r = res["rows"][arm][str(L)]
    return r["last"] / r["first"]


def _fmt(x: float, spec: str = ".3f") -> str:
    return format(x, spec) if math.isfinite(x) else "—"


def section(res: dict, out_dir: str) -> str:
    """Draw probe.png into out_dir; return the markdown of the probe's report section."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s, depths = res["settings"], res["settings"]["depths"]
    arms = list(res["rows"])
    fig, axes = plt.subplots(1, len(arms), figsize=(3.6 * len(arms), 3.2), sharey=True,
                             squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for L in depths:
            g = res["rows"][arm][str(L)]["grad"]
            ax.plot(np.arange(1, L + 1) / L, g, marker=".", label=f"L={L}")
        ax.set_yscale("log")
        ax.set_title(arm, fontsize=9)
        ax.set_xlabel("layer / L", fontsize=8)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("|dL/dW2| at init")
    fig.suptitle("Per-layer gradient norm at init (FFN output matrix), mean over seeds")
    fig.tight_layout()
    fig.savefig(f"{out_dir}/probe.png", dpi=90)
    plt.close(fig)

    lines = ["## Pre-LN vs Post-LN at initialisation", "",
             f"Width {s['n_embd']}, {s['n_head']} heads, block {s['block_size']}, batch "
             f"{s['batch_size']}, mean over {len(s['seeds'])} seeds (each its own init and "
             f"batch). Gradient: Frobenius norm of dL/dW2 of the FFN's output matrix "
             f"(`mlp.c_proj`, Xiong et al.'s W^(2,l)). Output change: RMS change of the logits "
             f"after one Adam step at lr {s['adam_lr']:g}.", "",
             "| arm | L | last-layer grad | vs L=%d | theory | top / bottom layer | "
             "output change |" % depths[0], "|---|---|---|---|---|---|---|"]
    for arm in arms:
        rel = relative_last(res, arm)
        for L in depths:
            r = res["rows"][arm][str(L)]
            th = res["theory"].get(arm, {}).get(str(L))
            lines.append(f"| {arm} | {L} | {_fmt(r['last'], '.4f')} ± {_fmt(r['last_sd'], '.4f')}"
                         f" | {rel[str(L)]:.2f} | {'—' if th is None else format(th, '.2f')} | "
                         f"{top_over_bottom(res, arm, L):.2f} | {_fmt(r['change'], '.4f')} |")
    deep = str(depths[-1])
    pre, post = relative_last(res, "pre-xavier")[deep], relative_last(res, "post-xavier")[deep]
    lines += ["", "![per-layer gradient norms at init](probe.png)", "",
              f"Under Xavier init without residual scaling, Pre-LN's last-layer gradient at "
              f"L={deep} is {pre:.2f} of its L={depths[0]} value (theory "
              f"{res['theory']['pre-xavier'][deep]:.2f}) and Post-LN's is {post:.2f} (theory "
              f"1): Xiong et al.'s scaling "
              f"{'held' if abs(pre - res['theory']['pre-xavier'][deep]) < 0.15 and post > 0.7 else 'did not hold'}"
              f" here.", ""]
    return "\n".join(lines)
