"""Generation strategies (chapter section 6) on the best model this machine trains: the default
`python train.py` model (the cpu-small config: 4 layers x 128, block 256, GPT-2's full
50,257-id vocabulary, 800 steps), trained once through the library (Trainer) into a cached
out_dir and reused while a finished checkpoint is there.

Unlike the other topics, `data` here is the GPT-2-id TokenData of the built-in corpus
(`runs.load_data(256, 50257)`), not the study's small vocabulary: the model reads GPT-2 ids.

Every strategy continues the same val-set prompts; the real continuation of each prompt is the
reference. Per strategy: the model's log p per token of what was written (scoring.log_probs),
the share of repeated 4-grams, distinct-1/2, and the 4-gram repetition within the first k
tokens for growing k (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration":
greedy and beam text repeats more the longer it gets). Sampling strategies run at several
seeds (mean and sd over seeds); greedy and beam are deterministic.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from gpt_jax.checkpoint.load import load_model
from gpt_jax.checkpoint.manager import latest_step
from gpt_jax.evaluation.scoring import log_probs
from gpt_jax.generation.decoding import generate
from gpt_jax.lab.study.vocab import small_vocab, unigram_loss
from gpt_jax.model.tokenizer import get_tokenizer
from gpt_jax.train.config import resolve_config
from gpt_jax.train.metrics import read_metrics
from gpt_jax.train.trainer import Trainer

__all__ = ["FULL", "TINY", "Settings", "cached_model", "distinct_n", "measure",
           "repetition_rate", "section", "strategy_list"]


@dataclass(frozen=True)
class Settings:
    """model_dir: the cached train.py run (relative to the working directory); train: overrides
    of the cpu-small TrainConfig as (key, value) pairs (() = the default train.py run);
    prompts of prompt_len val tokens, each continued by new_tokens; windows: the prefix lengths
    at which repetition is measured."""
    model_dir: str = "out/study-model"
    train: tuple = ()
    prompts: int = 16
    prompt_len: int = 16
    new_tokens: int = 240          # prompt + new = 256, the model's block
    windows: tuple = (32, 64, 128, 240)
    temperatures: tuple = (0.5, 0.7, 1.0, 1.3)
    top_k: int = 40
    top_p: float = 0.9
    num_beams: int = 4
    seeds: tuple = (0, 1, 2)
    prompt_seed: int = 0


FULL = Settings()
TINY = Settings(model_dir="out-study-tiny/model",
                train=(("max_iters", 6), ("n_layer", 1), ("n_head", 2), ("n_embd", 32),
                       ("block_size", 64), ("batch_size", 2), ("eval_interval", 6),
                       ("eval_iters", 1), ("warmup_iters", 1), ("lr_decay_iters", 6)),
                prompts=3, prompt_len=8, new_tokens=24, windows=(8, 16, 24),
                temperatures=(0.7, 1.3), num_beams=2, seeds=(0, 1))


# -- the metrics (no model: plain token lists) ----------------------------------------------------

def repetition_rate(tokens, n: int = 4) -> float:
    """Share of a sample's n-grams that occurred earlier in the same sample (0: none repeats;
    a greedy loop of period p drives it toward 1)."""
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def distinct_n(samples, n: int) -> float:
    """Distinct n-grams over all n-grams of all samples together (Li et al. 2016's diversity)."""
    grams = [tuple(t[i:i + n]) for t in samples for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def text_figures(samples, windows) -> dict:
    """repetition (4-grams, mean over samples), distinct-1/2, and repetition within the first
    k tokens for each k in windows."""
    return {"repetition": float(np.mean([repetition_rate(t) for t in samples])),
            "distinct_1": distinct_n(samples, 1), "distinct_2": distinct_n(samples, 2),
            "rep_at": [float(np.mean([repetition_rate(t[:k]) for t in samples]))
                       for k in windows]}


# -- the model: trained once, cached ------------------------------------------------------------

def cached_model(s: Settings, model_dir: Optional[str] = None, log=print):
    """The default train.py model (cpu-small + s.train), trained through the library's Trainer
    into model_dir (default s.model_dir) unless a finished checkpoint (step >= max_iters) is
    there; an interrupted run there is resumed.

    Returns:
      (params, cfg, info): info has out_dir, trained (whether this call trained) and curve
      (the run's eval rows: step, train_loss, val_loss; train rows: step, loss).
    """
    out_dir = model_dir or s.model_dir
    tc = resolve_config("cpu-small", {**dict(s.train), "out_dir": out_dir})
    done = latest_step(out_dir)
    trained = done is None or done < tc.max_iters
    if trained:
        if done is not None:
            tc = resolve_config("cpu-small", {**dict(s.train), "out_dir": out_dir,
                                              "init_from": "resume"})
        log(f"training the strategies model into {out_dir} ({tc.max_iters} steps, once; "
            f"{'resuming at step ' + str(done) if done is not None else 'from scratch'})")
        Trainer(tc, progress=False, log=log).fit()
    params, cfg = load_model(out_dir)
    return params, cfg, {"out_dir": out_dir, "trained": trained, "curve": read_curve(out_dir),
                         "step": latest_step(out_dir)}


def read_curve(out_dir: str) -> dict:
    """A train.py run's losses from its metrics.jsonl: train [[step, loss]], eval [[step,
    train_loss, val_loss]] (both empty without the file)."""
    rows = read_metrics(out_dir)
    return {"train": [[r["step"], r["loss"]] for r in rows if r.get("kind") == "train"],
            "eval": [[r["step"], r["train_loss"], r["val_loss"]] for r in rows
                     if r.get("kind") == "eval"]}


# -- the strategies -----------------------------------------------------------------------------

def strategy_list(s: Settings) -> list[tuple[str, dict, bool]]:
    """(name, generate() settings, sampled?) for each strategy, greedy first."""
    out = [("greedy", dict(temperature=0.0), False),
           (f"beam {s.num_beams}", dict(temperature=0.0, num_beams=s.num_beams), False)]
    out += [(f"T={t:g}", dict(temperature=t), True) for t in s.temperatures]
    out += [(f"top-k {s.top_k}", dict(top_k=s.top_k), True),
            (f"top-p {s.top_p:g}", dict(top_p=s.top_p), True)]
    return out


def prompt_windows(s: Settings, data, new_tokens: Optional[int] = None) -> np.ndarray:
    """int (prompts, prompt_len + new_tokens) val windows at fixed random starts: the prompt
    and its real continuation (new_tokens default s.new_tokens)."""
    val = np.asarray(data.splits["val"])
    W = s.prompt_len + (new_tokens or s.new_tokens)
    starts = np.random.default_rng(s.prompt_seed).integers(0, len(val) - W, size=s.prompts)
    return np.stack([val[a:a + W] for a in starts]).astype(np.int32)


def mean_logp(params, cfg, prompts: np.ndarray, new: np.ndarray) -> float:
    """The model's mean log p per token of `new` (B, N) after `prompts` (B, P)."""
    full = np.concatenate([prompts, new], axis=1).astype(np.int32)
    mask = np.zeros((len(full), full.shape[1] - 1), bool)
    mask[:, prompts.shape[1] - 1:] = True                # position t scores token t + 1
    return float(np.asarray(log_probs(params, cfg, full, mask)).sum() / mask.sum())


def measure(settings: Settings, data, *, bar=None, log=print, model=None,
            model_dir: Optional[str] = None) -> dict:
    """Every strategy on the same val prompts, against their real continuations.

    Args:
      settings: FULL or TINY (or another Settings).
      data: the built-in corpus as GPT-2-id TokenData (`.splits["train"/"val"]`).
      bar: optional tqdm bar, advanced by one per generate call.
      log: progress lines.
      model: (params, cfg) to use instead of the cached model (study.py --model OUT_DIR);
        model_dir: where the cached model is (default settings.model_dir).

    Returns:
      JSON-serialisable: model (where, cfg, val loss, unigram loss, curve), windows, rows
      (name -> figures, mean and sd over seeds for sampled strategies), tokens (seed 0 /
      deterministic output of each strategy), prompts, examples (text of the first prompt).
    """
    s = settings
    if model is None:
        params, cfg, info = cached_model(s, model_dir, log)
    else:
        (params, cfg), info = model, {"out_dir": model_dir or "given", "trained": False,
                                      "step": None,
                                      "curve": read_curve(model_dir) if model_dir else
                                      {"train": [], "eval": []}}
    enc = get_tokenizer()
    N = min(s.new_tokens, cfg.block_size - s.prompt_len)   # a --model with a shorter block
    windows = prompt_windows(s, data, N)
    prompts, real = windows[:, :s.prompt_len], windows[:, s.prompt_len:]
    wins = sorted({min(k, N) for k in s.windows})
    rows, tokens = {}, {}
    ref = text_figures(real.tolist(), wins)
    rows["real text"] = {**ref, "logp": mean_logp(params, cfg, prompts, real), "seeds": 0}
    tokens["real text"] = real.tolist()
    for name, kw, sampled in strategy_list(s):
        per_seed = []
        for seed in (s.seeds if sampled else (0,)):
            new = np.asarray(generate(params, cfg, prompts, N, key=seed, **kw))
            if not per_seed:
                tokens[name] = new.tolist()
            per_seed.append({**text_figures(new.tolist(), wins),
                             "logp": mean_logp(params, cfg, prompts, new)})
            if bar is not None:
                bar.update(1)
        rows[name] = summarise(per_seed)
        log(f"  {name}: log p {rows[name]['logp']:.2f}, repetition "
            f"{rows[name]['repetition']:.3f}, distinct-2 {rows[name]['distinct_2']:.3f}")
    unigram = unigram_loss(small_vocab(data, cfg.vocab_size))
    evals = info["curve"]["eval"]
    return {"model": {"out_dir": info["out_dir"], "trained_now": info["trained"],
                      "step": info["step"], "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
                      "block_size": cfg.block_size, "vocab_size": cfg.vocab_size,
                      "val_loss": evals[-1][2] if evals else None, "unigram": unigram,
                      "curve": info["curve"]},
            "settings": {"prompts": s.prompts, "prompt_len": s.prompt_len,
                         "new_tokens": N, "seeds": list(s.seeds)},
            "windows": wins, "rows": rows, "tokens": tokens, "prompts": prompts.tolist(),
            "examples": {n: enc.decode(t[0]) for n, t in tokens.items()},
            "prompt_text": enc.decode(prompts[0].tolist())}


def summarise(per_seed: list[dict]) -> dict:
    """Mean of each figure over seeds, its sd (ddof 1; 0 for one seed) as <key>_sd."""
    out = {"seeds": len(per_seed)}
    for k in per_seed[0]:
        v = np.asarray([r[k] for r in per_seed], float)
        out[k] = v.mean(axis=0).tolist()
        sd = v.std(axis=0, ddof=1) if len(v) > 1 else np.zeros_like(v[0])
        out[k + "_sd"] = sd.tolist()
    return out


# -- the report section --------------------------------------------------------------------------

def _pm(r: dict, k: str, spec: str = ".3f") -> str:
    sd = r.get(k + "_sd")
    return format(r[k], spec) + (f" ± {format(sd, spec)}" if r.get("seeds", 0) > 1 else "")


def section(res: dict, out_dir: str) -> str:
    """strategies.png (repetition against length; log p against distinct-2) and
    strategies_train.png (the model's loss curve) into out_dir; the markdown section."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    rows, wins, m = res["rows"], res["windows"], res["model"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in rows.items():
        style = dict(color="black", lw=2.5, ls="--") if name == "real text" else {}
        a.errorbar(wins, r["rep_at"], yerr=r.get("rep_at_sd"), marker="o", ms=3,
                   label=name, capsize=2, **style)
        b.errorbar(r["distinct_2"], r["logp"], xerr=r.get("distinct_2_sd"),
                   yerr=r.get("logp_sd"), marker="*" if name == "real text" else "o",
                   ms=9 if name == "real text" else 5, capsize=2, ls="none", label=name,
                   color="black" if name == "real text" else None)
    a.set_xscale("log", base=2)
    a.set_xlabel("first k generated tokens")
    a.set_ylabel("repeated 4-grams within them")
    a.set_title("Repetition against length", fontsize=10)
    a.legend(fontsize=7)
    b.set_xlabel("distinct-2 (diversity)")
    b.set_ylabel("model log p per token")
    b.set_title("Likelihood vs diversity (mean ± sd over seeds)", fontsize=10)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "strategies.png"), dpi=90)
    plt.close(fig)
    curve = m["curve"]
    if curve["eval"]:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        if curve["train"]:
            ax.plot(*zip(*curve["train"]), lw=0.8, alpha=0.5, label="train (batch)")
        ev = np.asarray(curve["eval"])
        ax.plot(ev[:, 0], ev[:, 2], "s-", ms=3, label="val")
        ax.axhline(m["unigram"], ls=":", color="gray")
        ax.text(0, m["unigram"], "unigram", fontsize=7, va="bottom")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(f"The strategies model: {m['n_layer']} x {m['n_embd']}, GPT-2 vocab",
                     fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "strategies_train.png"), dpi=90)
        plt.close(fig)
    st = res["settings"]
    val = m["val_loss"]
    L = ["## Generation strategies\n",
         f"Model: `{m['out_dir']}` (step {m['step']}), {m['n_layer']} layers x {m['n_embd']}, "
         f"block {m['block_size']}, vocabulary {m['vocab_size']:,}; val loss "
         + (f"**{val:.3f}** against the unigram baseline {m['unigram']:.3f} "
            f"({m['unigram'] - val:.2f} nats below)" if val is not None else
            f"not recorded (unigram baseline {m['unigram']:.3f})")
         + f". {st['prompts']} val-set prompts of {st['prompt_len']} tokens, each continued "
         f"by {st['new_tokens']} tokens; sampled strategies at seeds {st['seeds']} (mean ± sd "
         f"over seeds). *log p*: the model's own mean log-probability per written token; "
         f"*rep@k*: share of repeated 4-grams within the first k tokens.\n",
         "![strategies](strategies.png)\n"]
    if curve["eval"]:
        L.append("![training curve](strategies_train.png)\n")
    L += ["| strategy | log p / token | repeated 4-grams | distinct-1 | distinct-2 | "
          + " | ".join(f"rep@{k}" for k in wins) + " |",
          "|---|---|---|---|---|" + "---|" * len(wins)]
    for name, r in rows.items():
        at = " | ".join(f"{x:.3f}" for x in r["rep_at"])
        L.append(f"| {name} | {_pm(r, 'logp', '.2f')} | {_pm(r, 'repetition')} | "
                 f"{_pm(r, 'distinct_1')} | {_pm(r, 'distinct_2')} | {at} |")
    L += ["", claims(res), "",
          "The first prompt, and each strategy's continuation of it (seed 0):\n",
          "- **prompt**: `" + clean(res["prompt_text"]) + "`"]
    L += [f"- **{n}**: `{clean(t)}`" for n, t in res["examples"].items()]
    return "\n".join(L) + "\n"


def clean(text: str, limit: int = 400) -> str:
    text = text.replace("\n", "⏎").replace("`", "'")
    return text if len(text) <= limit else text[:limit] + " …"


def claims(res: dict) -> str:
    """One plain paragraph: which of the chapter's claims held on this run, each decided by
    the numbers (greedy's repetition grows with length and exceeds the real text's; beam
    scores a higher log p than greedy; higher temperature lowers log p and raises
    distinct-2), and which strategy writes text closest to the real text's statistics."""
    rows, wins = res["rows"], res["windows"]
    ref, greedy = rows["real text"], rows["greedy"]
    beam_name = next(n for n in rows if n.startswith("beam"))
    beam = rows[beam_name]
    grows = greedy["rep_at"][-1] > greedy["rep_at"][0] and \
        greedy["rep_at"][-1] > ref["rep_at"][-1]
    out = [f"Greedy decoding's 4-gram repetition {'grows' if grows else 'does not grow'} "
           f"with length past the real text's ({greedy['rep_at'][0]:.2f} within the first "
           f"{wins[0]} tokens, {greedy['rep_at'][-1]:.2f} within {wins[-1]}; the real text "
           f"{ref['rep_at'][0]:.2f} and {ref['rep_at'][-1]:.2f}): the degeneration Holtzman "
           f"et al. (2020) report {'held' if grows else 'did not show'}. {beam_name} "
           f"{'finds' if beam['logp'] > greedy['logp'] else 'does not find'} likelier text "
           f"than greedy (log p {beam['logp']:.2f} vs {greedy['logp']:.2f} per token; the "
           f"real text {ref['logp']:.2f}) and repeats {beam['repetition']:.2f} of its "
           f"4-grams (the real text {ref['repetition']:.2f})."]
    temps = sorted((float(n[2:]), r) for n, r in rows.items() if n.startswith("T="))
    if len(temps) > 1:
        lp = [r["logp"] for _, r in temps]
        d2 = [r["distinct_2"] for _, r in temps]
        mono = all(a > b for a, b in zip(lp, lp[1:])) and all(a < b for a, b in zip(d2, d2[1:]))
        how = ("lowers log p and raises distinct-2 at every step" if mono else
               "does not move log p and distinct-2 monotonically")
        out.append(f" Raising the temperature from {temps[0][0]:g} to {temps[-1][0]:g} {how} "
                   f"({lp[0]:.2f} → {lp[-1]:.2f}; {d2[0]:.2f} → {d2[-1]:.2f}).")
    sampled = {n: r for n, r in rows.items() if r.get("seeds", 0) > 1}
    if sampled:
        gap = lambda r: abs(r["repetition"] - ref["repetition"]) + \
            abs(r["distinct_2"] - ref["distinct_2"])
        best = min(sampled, key=lambda n: gap(sampled[n]))
        out.append(f" Closest to the real text in repetition and distinct-2: {best} "
                   f"({sampled[best]['repetition']:.2f}, {sampled[best]['distinct_2']:.2f} "
                   f"against {ref['repetition']:.2f}, {ref['distinct_2']:.2f}).")
    return "".join(out)
