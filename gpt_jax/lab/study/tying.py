"""Weight tying, measured: the tied head (logits = h · wteᵀ, GPT-2's) against an untied one (its
own (V, C) lm_head), 3 seeds each (mean ± sd), the val loss split by how frequent the target
token is, an equal-parameter arm, and (Press & Wolf 2017) how alike the untied model's input
and output embeddings are.

Equal parameters: the untied head adds V·C parameters. The arm that matches it is the *tied*
model widened until its count equals the untied one's (equal_width): it keeps the untied arm
as it is (the same model answers both questions: tied vs untied at equal width, and at equal
parameters), spends the extra parameters where a tied model would (wte and the body, not a
second table), and keeps depth, steps and batches, so the only change is C. The cost: the
wide model also does more FLOPs per token (the untied head does the same matmul as the tied).

Frequency buckets: the small vocabulary's ids are ranked by train count (vocab.small_vocab), so
thirds of the kept ids by rank are frequent / middle / rare; UNK (every other GPT-2 id, common)
is its own bucket. Tying is said to help rare tokens: an untied wte row gets a gradient only
where its token is an input, a tied one also from every softmax it is in.

Agreement (Press & Wolf sec. 3): over the top_n most frequent ids, the pairwise cosine
similarities of wte's rows and of lm_head's rows, and the Pearson and Spearman correlation of
those two sets of N(N-1)/2 numbers. A tied model has 1 by construction; the same measure at
init (independent normal matrices) is ~0; between two seeds' wte it shows what "alike" can
reach for embeddings learned apart.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.lab.study.fit import mean_sd, seed_slice, train_seeds
from gpt_jax.lab.study.vocab import unigram_loss
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import GPT, count_params, init_params
from gpt_jax.train.loss import loss_fn

__all__ = ["FULL", "TINY", "Settings", "agreement", "buckets", "equal_width", "measure",
           "section", "token_nll"]


@dataclass(frozen=True)
class Settings:
    n_layer: int = 4
    n_head: int = 2
    n_embd: int = 64
    block_size: int = 64
    batch_size: int = 8
    steps: int = 600
    lr: float = 3e-3
    warmup: int = 30
    seeds: tuple = (0, 1, 2)
    top_n: int = 256             # the most frequent ids whose similarities are compared
    max_windows: int = 1024      # non-overlapping val windows scored (1024 x 64 covers val)


FULL = Settings()
TINY = Settings(n_layer=1, n_embd=32, block_size=16, batch_size=4, steps=6, warmup=2,
                seeds=(0, 1), top_n=24, max_windows=16)


def model_config(s: Settings, vocab: int, **switches) -> GPTConfig:
    return GPTConfig(vocab_size=vocab, n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd,
                     block_size=s.block_size, **switches)


def equal_width(cfg: GPTConfig) -> int:
    """The width (a multiple of n_head) at which the tied cfg has the parameter count nearest
    to cfg untied's: cfg + V·C parameters."""
    goal = count_params(cfg.replace(tie_embeddings=False))
    c = cfg.n_embd
    while count_params(cfg.replace(n_embd=c + cfg.n_head)) < goal:   # the count grows with c
        c += cfg.n_head
    return min((c, c + cfg.n_head),
               key=lambda w: abs(count_params(cfg.replace(n_embd=w)) - goal))


def buckets(counts: np.ndarray) -> list[dict]:
    """Thirds of the kept ids by train count (frequent, middle, rare), and UNK (the last id)."""
    kept = np.argsort(-counts[:-1], kind="stable")
    thirds = np.array_split(kept, 3)
    out = [{"name": n, "ids": t} for n, t in zip(("frequent", "middle", "rare"), thirds)]
    return out + [{"name": "UNK", "ids": np.array([len(counts) - 1])}]


def val_windows(data, T: int, limit: int) -> np.ndarray:
    """int32 (N, T + 1): consecutive non-overlapping val windows (each val token but the first
    is a target once), at most `limit` of them."""
    val = np.asarray(data.splits["val"])
    n = min(limit, (len(val) - 1) // T)
    return np.stack([val[i * T:i * T + T + 1] for i in range(n)]).astype(np.int32)


def token_nll(params, cfg: GPTConfig, windows, chunk: int = 64) -> np.ndarray:
    """-log p(w[j + 1] | w[:j + 1]) per target, (S, N, T), for params stacked over S seeds;
    windows int (N, T + 1). Chunks of windows keep the (S, chunk, T, V) logits small."""
    @jax.jit
    def one(p, w):
        logits = GPT(cfg).apply({"params": p}, w[:, :-1])
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        return -jnp.take_along_axis(logp, w[:, 1:, None], axis=-1)[..., 0]
    f = jax.jit(jax.vmap(one, in_axes=(0, None)))
    return np.concatenate([np.asarray(f(params, jnp.asarray(windows[i:i + chunk])))
                           for i in range(0, len(windows), chunk)], axis=1)


def _upper(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices(len(m), k=1)]


def _cos(e: np.ndarray) -> np.ndarray:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    return e @ e.T


def _ranks(x: np.ndarray) -> np.ndarray:
    # float similarities: ties have probability ~0, so argsort ranks are Spearman's
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Pearson and Spearman correlation of the pairwise cosine similarities of a's rows with
    those of b's rows (a, b: (N, C) and (N, C'), the same N tokens in the same order)."""
    x, y = _upper(_cos(np.asarray(a, np.float64))), _upper(_cos(np.asarray(b, np.float64)))
    return {"pearson": float(np.corrcoef(x, y)[0, 1]),
            "spearman": float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])}


def _agreements(pairs) -> dict:
    rows = [agreement(a, b) for a, b in pairs]
    return {k: mean_sd([r[k] for r in rows]) for k in ("pearson", "spearman")}


def measure(settings: Settings, data, *, bar=None, log=print) -> dict:
    """Train tied, untied and tied-at-equal-parameters, len(seeds) seeds each (vmapped); score
    every val window; split by frequency bucket; compare the untied embeddings.

    Args:
      settings: FULL or TINY (or another Settings).
      data: the study's SmallVocab (its .counts rank the ids).
      bar: a tqdm bar, advanced one per training step (3 arms x steps).
      log: prints one line as each arm starts.

    Returns:
      A JSON-serialisable dict: arms (per seed val loss, per bucket loss, curve), buckets,
      agreement (mean, sd) pairs, scatter (a sample of seed 0's similarities), settings.
    """
    s, V = settings, data.size
    tied = model_config(s, V)
    arms = {"tied": tied, "untied": tied.replace(tie_embeddings=False),
            "tied, equal params": tied.replace(n_embd=equal_width(tied))}
    windows = val_windows(data, s.block_size, s.max_windows)
    targets = windows[:, 1:]
    p_uni = (data.counts + 1) / (data.counts.sum() + V)     # vocab.unigram_loss's distribution
    uni = -np.log(p_uni[targets])
    bks = buckets(data.counts)
    where = [np.isin(targets, b["ids"]) for b in bks]
    bks, where = zip(*[(b, w) for b, w in zip(bks, where) if w.any()])   # scored ones only
    res = {"settings": dataclasses.asdict(s), "unigram": unigram_loss(data),
           "scored_tokens": int(targets.size), "unigram_scored": float(uni.mean()),
           "buckets": [{"name": b["name"], "n_ids": int(len(b["ids"])),
                        "val_share": float(w.mean()),
                        "mean_train_count": float(data.counts[b["ids"]].mean()),
                        "unigram": float(uni[w].mean())} for b, w in zip(bks, where)],
           "arms": {}, "seconds": {}}
    fits = {}
    for name, cfg in arms.items():
        log(f"tying: {name} (width {cfg.n_embd}), {len(s.seeds)} seeds x {s.steps} steps ...")
        fits[name] = fit = train_seeds(
            cfg, lambda p, b, k, c=cfg: (loss_fn(p, c, b), jnp.int32(b[:, 1:].size)), data,
            seeds=s.seeds, steps=s.steps, lr=s.lr, warmup=s.warmup, batch_size=s.batch_size,
            bar=bar, label=name)
        nll = token_nll(fit.params, cfg, windows)                       # (S, N, T)
        res["arms"][name] = {
            "width": cfg.n_embd, "params": count_params(cfg),
            "val": [float(x.mean()) for x in nll],
            "buckets": [[float(x[w].mean()) for x in nll] for w in where],
            "train_final": [float(x[-10:].mean()) for x in fit.losses],
            "curve": fit.losses.mean(0).tolist()}
        res["seconds"][name] = fit.seconds
    n = min(s.top_n, V - 1)
    top = np.argsort(-data.counts[:-1], kind="stable")[:n]
    S = len(s.seeds)
    ti = [np.asarray(seed_slice(fits["tied"].params, i)["wte"]["embedding"])[top]
          for i in range(S)]
    ui = [np.asarray(seed_slice(fits["untied"].params, i)["wte"]["embedding"])[top]
          for i in range(S)]
    uo = [np.asarray(seed_slice(fits["untied"].params, i)["lm_head"]["embedding"])[top]
          for i in range(S)]
    init = [init_params(arms["untied"], jax.random.key(sd)) for sd in s.seeds]
    apart = [(i, j) for i in range(S) for j in range(i + 1, S)]
    cross = [(i, j) for i in range(S) for j in range(S) if i != j]
    res["agreement"] = {
        "top_n": n,
        "untied in vs out": _agreements(zip(ui, uo)),
        "untied in vs out, at init": _agreements(
            (np.asarray(p["wte"]["embedding"])[top], np.asarray(p["lm_head"]["embedding"])[top])
            for p in init),
        "tied wte vs itself": _agreements(zip(ti, ti)),
        "untied in, seed vs seed": _agreements((ui[i], ui[j]) for i, j in apart),
        "untied out, seed vs seed": _agreements((uo[i], uo[j]) for i, j in apart),
        # other seeds only: a tied and an untied model of one seed start from the same wte
        "tied wte vs untied in": _agreements((ti[i], ui[j]) for i, j in cross),
        "tied wte vs untied out": _agreements((ti[i], uo[j]) for i, j in cross)}
    res["scatter"] = {"in": _upper(_cos(ui[0]))[::37].tolist(),
                      "out": _upper(_cos(uo[0]))[::37].tolist()}
    return res


def _pm(values, spec: str = ".3f") -> str:
    m, sd = mean_sd(values)
    return f"{m:{spec}} ± {sd:{spec}}"


def figure(res: dict, path: str) -> None:
    """Left: val loss minus unigram per frequency bucket (mean ± sd over seeds). Middle: train
    loss (mean over seeds). Right: cosine similarities, untied input vs output (seed 0)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 3.8))
    names, bks = list(res["arms"]), res["buckets"]
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        arm = res["arms"][name]
        d = [np.asarray(v) - bk["unigram"] for v, bk in zip(arm["buckets"], bks)]
        a.bar(np.arange(len(bks)) + i * w, [x.mean() for x in d], w,
              yerr=[x.std(ddof=1) if len(x) > 1 else 0 for x in d], label=name, capsize=2)
        y = np.asarray(arm["curve"])
        k = max(1, min(25, len(y)))
        b.plot(np.convolve(y, np.ones(k) / k, mode="valid"), label=f"{name} ({arm['params']:,})")
    a.set_xticks(np.arange(len(bks)) + w, [f"{bk['name']}\n{bk['val_share']:.0%} of val"
                                           for bk in bks], fontsize=8)
    a.axhline(0, color="gray", lw=0.8)
    a.set(ylabel="val loss − unigram (nats)", title="by target frequency")
    a.legend(fontsize=7)
    b.axhline(res["unigram"], color="gray", ls=":")
    b.set(xlabel="step", ylabel="train loss (mean of seeds)", title="training")
    b.legend(fontsize=7)
    sc, ag = res["scatter"], res["agreement"]["untied in vs out"]
    c.scatter(sc["in"], sc["out"], s=2, alpha=0.4)
    c.set(xlabel="cos(wte_i, wte_j)", ylabel="cos(lm_head_i, lm_head_j)",
          title=f"untied, top {res['agreement']['top_n']} ids: Spearman {ag['spearman'][0]:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def section(res: dict, out_dir: str) -> str:
    """Draw tying.png into out_dir and write the report's weight-tying section.

    Args:
      res: what measure returned (or its JSON round trip).
      out_dir: the report's directory (made if missing).

    Returns:
      The section's markdown: heading, tables, the figure link, the verdict.
    """
    os.makedirs(out_dir, exist_ok=True)
    figure(res, os.path.join(out_dir, "tying.png"))
    s, arms, bks = res["settings"], res["arms"], res["buckets"]
    L = ["## Weight tying\n", "![tying](tying.png)\n",
         f"{s['n_layer']} layers, {s['steps']} steps of batch {s['batch_size']} x "
         f"{s['block_size']}, seeds {', '.join(map(str, s['seeds']))} (each seed its own init "
         f"and batches; mean ± sd over seeds). Val loss over {res['scored_tokens']:,} val "
         f"tokens (unigram {res['unigram_scored']:.3f} on them; {res['unigram']:.3f} on the "
         f"whole split). Buckets: thirds of the kept ids by train count, UNK apart.\n",
         "| arm | width | parameters | val loss | − unigram | "
         + " | ".join(f"{b['name']} − unigram" for b in bks) + " |",
         "|---|---|---|---|---|" + "---|" * len(bks)]
    for name, arm in arms.items():
        cells = [_pm(np.asarray(v) - b["unigram"]) for v, b in zip(arm["buckets"], bks)]
        L.append(f"| {name} | {arm['width']} | {arm['params']:,} | {_pm(arm['val'])} | "
                 f"{_pm(np.asarray(arm['val']) - res['unigram_scored'])} | "
                 + " | ".join(cells) + " |")
    L += ["", "| bucket | ids | share of val tokens | mean train count | unigram |",
          "|---|---|---|---|---|"]
    L += [f"| {b['name']} | {b['n_ids']} | {b['val_share']:.1%} | {b['mean_train_count']:,.0f}"
          f" | {b['unigram']:.3f} |" for b in bks]
    diff = {k: np.asarray(arms["untied"][k] if k == "val" else arms["untied"]["buckets"][k])
            - np.asarray(arms["tied"][k] if k == "val" else arms["tied"]["buckets"][k])
            for k in ["val", *range(len(bks))]}
    L += ["", "Untied minus tied, paired by seed (positive: tying helped): all tokens "
          f"{_pm(diff['val'])}; " + "; ".join(f"{b['name']} {_pm(diff[i])}"
                                               for i, b in enumerate(bks)) + ".\n",
          f"Input/output embedding agreement over the {res['agreement']['top_n']} most "
          "frequent ids (correlation of pairwise cosine similarities; mean ± sd):\n",
          "| compared | Pearson | Spearman |", "|---|---|---|"]
    for k, v in res["agreement"].items():
        if k != "top_n":
            L.append(f"| {k} | {v['pearson'][0]:.3f} ± {v['pearson'][1]:.3f} | "
                     f"{v['spearman'][0]:.3f} ± {v['spearman'][1]:.3f} |")
    L += ["", _verdict(res, diff) + "\n"]
    return "\n".join(L)


def _noise(d) -> str:
    """'+m ± sd' of paired differences, and whether the mean is 2 standard errors from 0."""
    m, sd = mean_sd(d)
    real = len(d) > 1 and abs(m) > 2 * sd / np.sqrt(len(d))
    return f"{m:+.3f} ± {sd:.3f}{'' if real else ', within noise'}"


def _verdict(res: dict, diff: dict) -> str:
    arms = res["arms"]
    rare = next((i for i, b in enumerate(res["buckets"]) if b["name"] == "rare"), None)
    m = mean_sd(diff["val"])[0]
    rare_s = "" if rare is None else (
        f"; on the rare third {_noise(diff[rare])}: tying "
        + ("helped the rare tokens most" if mean_sd(diff[rare])[0] > max(m, 0) else
           "did not help the rare tokens more than the rest"))
    wide = np.asarray(arms["untied"]["val"]) - np.asarray(arms["tied, equal params"]["val"])
    ag = res["agreement"]
    return (f"Untied minus tied over {len(diff['val'])} seeds, paired: {_noise(diff['val'])} "
            f"overall{rare_s}; untied minus the tied model of equal parameters "
            f"{_noise(wide)}; the untied model's input and output similarities agree at "
            f"Spearman {ag['untied in vs out']['spearman'][0]:.2f} (at init "
            f"{ag['untied in vs out, at init']['spearman'][0]:.2f}), and the tied wte agrees "
            f"with the untied output table at {ag['tied wte vs untied out']['spearman'][0]:.2f}"
            f", with the input table at {ag['tied wte vs untied in']['spearman'][0]:.2f}.")
