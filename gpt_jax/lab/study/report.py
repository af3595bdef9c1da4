"""Figures (matplotlib PNGs) and the markdown report of a study run."""
from __future__ import annotations

import math
import os


from gpt_jax.lab.study.experiments import crossover, failing_lr, trains


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _fmt(x, spec=".3f"):
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def fig_norm(runs, s, path):
    plt = _plt()
    depths, lrs = s.norm_depths, s.norm_lrs
    fig, axes = plt.subplots(len(lrs), len(depths), figsize=(4 * len(depths), 2.8 * len(lrs)),
                             squeeze=False, sharey=True)
    colors = {"pre": "tab:blue", "post": "tab:red"}
    for r in runs:
        if r.lr not in lrs or r.cfg.n_layer not in depths:
            continue
        ax = axes[lrs.index(r.lr)][depths.index(r.cfg.n_layer)]
        ax.plot(r.losses, color=colors[r.cfg.norm], linestyle="-" if r.warmup else "--",
                label=f"{r.cfg.norm}-LN, {'warm-up' if r.warmup else 'no warm-up'}"
                      + (" (diverged)" if r.diverged else ""))
        ax.set_title(f"{r.cfg.n_layer} layers, lr {r.lr:g}", fontsize=9)
    for ax in axes.flat:
        ax.legend(fontsize=6)
        ax.set_xlabel("step", fontsize=8)
    axes[0][0].set_ylabel("train loss")
    fig.suptitle("Pre-LN vs Post-LN: train loss (dashed: no warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fig_curves(named, path, title, hlines=()):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, run in named.items():
        ax.plot(run.losses, label=label)
    for y, label in hlines:
        ax.axhline(y, linestyle=":", color="gray")
        ax.text(0, y, label, fontsize=7, va="bottom")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fig_strategies(rows, path):
    plt = _plt()
    keys = [("repetition", "repeated 4-grams"), ("distinct_2", "distinct-2"),
            ("in_corpus", "share of corpus words"), ("loglik", "log p per token")]
    names = list(rows)
    fig, axes = plt.subplots(1, len(keys), figsize=(16, 3.6))
    for ax, (k, label) in zip(axes, keys):
        ax.bar(range(len(names)), [rows[n][k] for n in names], color="tab:blue")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fig_kv(kv, path):
    plt = _plt()
    rows = kv["rows"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = [r["length"] for r in rows]
    for k in ("cached", "recomputed"):
        ax.plot(x, [1e3 * r[f"{k}_s_per_token"] for r in rows], marker="o", label=k)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (prompt 8 + new tokens)")
    ax.set_ylabel("ms per new token")
    ax.set_title("KV cache vs full recomputation (greedy, batch 1)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(out_dir, s, res, header: str) -> str:
    """All figures into out_dir, and out_dir/report.md; returns the report's path."""
    os.makedirs(out_dir, exist_ok=True)
    L = [f"# Study report\n\n{header}\n"]
    if "norm" in res:
        runs = res["norm"]
        fig_norm(runs, s, os.path.join(out_dir, "norm.png"))
        L += ["## Pre-LN vs Post-LN\n", "![norm](norm.png)\n",
              f"Each run: {s.norm_steps} steps of batch {s.batch_size} x {s.block_size} "
              f"tokens, width {s.n_embd}, AdamW with clipping at 1.0, the same init seed and "
              f"batches. *Trains*: final loss (mean of the last 10 steps) at least 2 nats below "
              f"the first; *diverged*: non-finite, or 3 nats above the first.\n",
              "| depth | warm-up | norm | " + " | ".join(f"lr {lr:g}" for lr in s.norm_lrs)
              + " | fails from lr | trains up to lr |",
              "|---|---|---|" + "---|" * len(s.norm_lrs) + "---|---|"]
        for d in s.norm_depths:
            for wu in (0, s.norm_warmup):
                for norm in ("pre", "post"):
                    cells = []
                    for lr in s.norm_lrs:
                        r = next((r for r in runs if (r.cfg.n_layer, r.warmup, r.cfg.norm,
                                                      r.lr) == (d, wu, norm, lr)), None)
                        cells.append("—" if r is None else "diverged" if r.diverged else
                                     f"{r.final():.2f}" + ("" if trains(r) else " (stalled)"))
                    if cells == ["—"] * len(cells):
                        continue
                    fail, ok = failing_lr(runs, norm, d, wu)
                    L.append(f"| {d} | {wu} | {norm} | " + " | ".join(cells)
                             + f" | {_fmt(fail, 'g')} | {_fmt(ok, 'g')} |")
        L.append("")
    if "heads" in res:
        h = res["heads"]
        fig_curves({f"tied ({h['params_tied']:,} params)": h["tied"],
                    f"untied ({h['params_untied']:,} params)": h["untied"]},
                   os.path.join(out_dir, "heads.png"), "Tied vs untied LM head")
        L += ["## Tied vs untied head\n", "![heads](heads.png)\n",
              "| head | parameters | val loss | final train loss |", "|---|---|---|---|",
              f"| tied | {h['params_tied']:,} | {_fmt(h['tied'].val_loss)} | "
              f"{_fmt(h['tied'].final())} |",
              f"| untied | {h['params_untied']:,} | {_fmt(h['untied'].val_loss)} | "
              f"{_fmt(h['untied'].final())} |",
              f"\nThe untied head adds {h['params_untied'] - h['params_tied']:,} parameters "
              f"({h['params_untied'] / h['params_tied']:.2f}x), at {s.steps} equal steps.\n"]
    if "mask" in res:
        m = res["mask"]
        lines = [(m["causal"].val_loss, "causal: val loss")]
        if "bi_prefix_loss" in m:
            lines.append((m["bi_prefix_loss"], "bidirectional: val loss from the prefix only"))
        fig_curves({"causal": m["causal"], "bidirectional": m["bidirectional"]},
                   os.path.join(out_dir, "mask.png"),
                   "Causal vs bidirectional mask on next-token prediction", lines)
        bi = m["bidirectional"]
        L += ["## The causal mask (GPT vs BERT)\n", "![mask](mask.png)\n",
              f"Replacing every token from position {m['cut']} on by a random one changes the "
              f"logits before it by at most **{m['perturb_causal']:.3g}** in the causal model, "
              f"and by up to {m['perturb_bidirectional']:.3g} in the bidirectional one.\n",
              "| mask | final train loss | val loss (as trained) | val loss, prefix only |",
              "|---|---|---|---|",
              f"| causal | {_fmt(m['causal'].final())} | {_fmt(m['causal'].val_loss)} | "
              f"{_fmt(m['causal'].val_loss)} (the same by construction) |",
              f"| bidirectional | {_fmt(bi.final())} | {_fmt(bi.val_loss)} | "
              f"{_fmt(m.get('bi_prefix_loss'))} |", ""]
        if "bi_text" in m:
            L += ["A greedy sample of the bidirectional model (recomputed per token, "
                  "generate_uncached), after an 8-token prompt:\n",
                  "```\n" + m["bi_text"].replace("```", "'''") + "\n```\n"]
    if "strategies" in res:
        rows = res["strategies"]
        fig_strategies(rows, os.path.join(out_dir, "strategies.png"))
        L += ["## Generation strategies\n", res.get("strategies_model", ""),
              "![strategies](strategies.png)\n",
              "| strategy | repeated 4-grams | distinct-1 | distinct-2 | corpus words | "
              "log p / token |", "|---|---|---|---|---|---|"]
        for n, r in rows.items():
            L.append(f"| {n} | {r['repetition']:.3f} | {r['distinct_1']:.3f} | "
                     f"{r['distinct_2']:.3f} | {r['in_corpus']:.3f} | {r['loglik']:.2f} |")
        L += ["", "First sample of each (prompt || continuation):\n"]
        for n, r in rows.items():
            L += [f"- **{n}**: `{r['example'].replace(chr(10), ' ').replace('`', chr(39))}`"]
        L.append("")
    if "kv" in res:
        kv = res["kv"]
        fig_kv(kv, os.path.join(out_dir, "kvcache.png"))
        c = kv["cfg"]
        x = crossover(kv["rows"])
        L += ["## KV cache\n", "![kv](kvcache.png)\n",
              f"Model: {c.n_layer} layers x {c.n_embd}, block {c.block_size}, random weights; "
              f"one prompt of 8 tokens, greedy. Medians of interleaved calls.\n",
              "| length | new tokens | cached ms/token | recomputed ms/token | ratio | "
              "same tokens |", "|---|---|---|---|---|---|"]
        for r in kv["rows"]:
            L.append(f"| {r['length']} | {r['new_tokens']} | "
                     f"{1e3 * r['cached_s_per_token']:.2f} | "
                     f"{1e3 * r['recomputed_s_per_token']:.2f} | "
                     f"{r['recomputed_s_per_token'] / r['cached_s_per_token']:.1f}x | "
                     f"{r['same_tokens']} |")
        first = kv["rows"][0]["length"]
        L += ["", "Crossover: none in the range (the recomputation was never slower)." if not x
              else f"Crossover: the cache is faster per token at every length measured, from "
                   f"the shortest ({x}) on." if x == first else
              f"Crossover: the cache is faster per token from length **{x}** on.", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")
    return path
