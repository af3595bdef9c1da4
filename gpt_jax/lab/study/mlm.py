"""GPT vs BERT for real: the bidirectional model (GPTConfig(causal=False)) trained with BERT's
masked-LM objective, against the causal model trained with next-token loss, at the same budget
(steps, batch, width, depth, optimizer, batches).

BERT's objective (Devlin et al. 2019, sec. 3.1; transformers 5.24.0 data/data_collator.py:804-866,
`DataCollatorForLanguageModeling.torch_mask_tokens`): choose each position with probability 0.15
(a Bernoulli draw per token, as the collator does); of the chosen, 80% become [MASK], 10% a
random id, 10% stay; the loss is taken on the chosen positions only.

[MASK] is one extra id: the MLM model's vocab_size is the small vocabulary's + 1 (mask_id =
data.size, the last row of wte). It is an input only: its logit is set to -inf
(model.gpt.mask_vocab) before every loss, so both models predict over the same data.size ids.
The causal model keeps vocab_size = data.size (64 fewer parameters, one wte row) and is the
library's model and loss unchanged.

Position alignment, so that both models are scored on the same tokens: a val window w has
block_size + 1 tokens; the causal model reads w[:-1] and predicts w[j + 1] from w[:j + 1]; the
MLM reads x = w[:-1] (corrupted) and predicts x[j] from both sides. Positions j >= 1 of x are
predicted by both: the MLM from the whole (corrupted) window, the causal one from w[:j].
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_jax.data.tokens import BatchSampler
from gpt_jax.lab.study.fit import seed_slice, train_seeds
from gpt_jax.lab.study.vocab import unigram_loss
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import GPT, count_params, mask_vocab
from gpt_jax.model.tokenizer import get_tokenizer
from gpt_jax.train.loss import loss_fn

__all__ = ["FULL", "TINY", "Settings", "bert_mask", "causal_nll", "greedy", "measure",
           "mlm_loss", "mlm_nll", "prefix_nll", "section"]

# kinds of position after bert_mask
KEPT_OUT, MASKED, RANDOM, KEPT = 0, 1, 2, 3
KINDS = {"[MASK]": MASKED, "random id": RANDOM, "kept": KEPT}


@dataclass(frozen=True)
class Settings:
    n_layer: int = 4
    n_head: int = 2
    n_embd: int = 64
    block_size: int = 64
    batch_size: int = 8
    steps: int = 1000
    lr: float = 3e-3
    warmup: int = 30
    rate: float = 0.15           # BERT's share of chosen positions
    eval_batches: int = 16       # the val batches every comparison is made on (the same ones)
    eval_every: int = 125
    prompt: int = 16             # greedy samples: val prompt and new tokens
    new_tokens: int = 24
    leakage: bool = True         # also train the bidirectional model on next-token loss


FULL = Settings()
TINY = Settings(n_layer=1, n_embd=32, block_size=16, batch_size=4, steps=6, warmup=2,
                eval_batches=2, eval_every=3, prompt=4, new_tokens=4)


def model_config(s: Settings, vocab: int, **switches) -> GPTConfig:
    return GPTConfig(vocab_size=vocab, n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd,
                     block_size=s.block_size, **switches)


def bert_mask(tokens, key, mask_id: int, n_real: int, rate: float = 0.15):
    """BERT's corruption of tokens int (B, T).

    Returns:
      (inputs (B, T): [MASK], a random id in [0, n_real) or the token itself at the chosen
      positions, the token elsewhere; kind int8 (B, T): KEPT_OUT (not chosen), MASKED, RANDOM,
      KEPT). Chosen = kind != KEPT_OUT, each position independently with probability `rate`;
      of them 80% MASKED, 10% RANDOM (the random id may equal the token, as in BERT), 10% KEPT.
    """
    k_choose, k_kind, k_id = jax.random.split(key, 3)
    chosen = jax.random.uniform(k_choose, tokens.shape) < rate
    r = jax.random.uniform(k_kind, tokens.shape)
    kind = jnp.where(~chosen, KEPT_OUT, jnp.where(r < 0.8, MASKED, jnp.where(r < 0.9, RANDOM,
                                                                             KEPT)))
    random_ids = jax.random.randint(k_id, tokens.shape, 0, n_real)
    inputs = jnp.where(kind == MASKED, mask_id, jnp.where(kind == RANDOM, random_ids, tokens))
    return inputs.astype(tokens.dtype), kind.astype(jnp.int8)


def _nll(logits, targets, n_valid: int):
    # ids >= n_valid ([MASK]) can never be predicted: -inf logit, no share of the softmax
    logits = mask_vocab(logits.astype(jnp.float32), n_valid)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def mlm_nll(params, cfg: GPTConfig, inputs, targets):
    """-log p(targets[:, j] | inputs) at every position j, (B, T), the whole window seen
    (cfg bidirectional); the last id of cfg's vocabulary ([MASK]) excluded from the softmax."""
    logits = GPT(cfg).apply({"params": params}, inputs)                 # (B, T, V + 1)
    return _nll(logits, targets, cfg.vocab_size - 1)


def mlm_loss(params, cfg: GPTConfig, tokens, key, rate: float = 0.15):
    """BERT's loss on windows tokens int (B, T + 1): x = tokens[:, :-1] corrupted by bert_mask,
    the mean -log p of the original token over the chosen positions only.

    Returns:
      (loss, number of chosen positions): the supervised tokens of this step.
    """
    x = tokens[:, :-1]
    inputs, kind = bert_mask(x, key, cfg.vocab_size - 1, cfg.vocab_size - 1, rate)
    chosen = kind != KEPT_OUT
    n = chosen.sum()
    return jnp.where(chosen, mlm_nll(params, cfg, inputs, x), 0.0).sum() / jnp.maximum(n, 1), n


def causal_nll(params, cfg: GPTConfig, tokens):
    """-log p(tokens[:, j + 1] | the model's view of tokens[:, :-1]) per position, (B, T): the
    next-token loss of train.loss.loss_fn before its mean (a causal cfg sees tokens[:, :j + 1];
    a bidirectional one the whole window, the answer at j + 1 included)."""
    logits = GPT(cfg).apply({"params": params}, tokens[:, :-1])
    return _nll(logits, tokens[:, 1:], cfg.vocab_size)


def prefix_nll(params, cfg: GPTConfig, inputs, targets, n_valid: int, mask_id=None):
    """Left to right, as when generating: -log p(targets[:, t]) with keys <= t visible only,
    (B, T), one forward per position. mask_id given: inputs[:, t] is replaced by it first (the
    MLM fills an appended [MASK]: targets = inputs); else inputs[:, t] is the last token read
    (a next-token model: targets = the inputs shifted by one). For a causal model this is
    causal_nll (its mask already hides the future)."""
    T, model = inputs.shape[1], GPT(cfg)

    def at(t):
        x = inputs if mask_id is None else inputs.at[:, t].set(mask_id)
        visible = (jnp.arange(T) <= t)[None, None, None, :]                # keys <= t
        logits = model.apply({"params": params}, x, mask=visible, logits_at=t)[:, 0]
        return _nll(logits, targets[:, t], n_valid)
    return jax.lax.map(at, jnp.arange(T)).T


def greedy(params, cfg: GPTConfig, prompt, n_new: int, n_valid: int, mask_id=None,
           ban=()) -> list:
    """Greedy left-to-right continuation of prompt (a list of ids), n_new ids. mask_id given:
    the MLM's way, append [MASK], fill it with the argmax, repeat (keys <= the [MASK] seen);
    else the next-token way, the argmax at the last position. `ban`: ids never chosen (UNK:
    the most frequent id, which greedy text would otherwise repeat)."""
    T, shift = cfg.block_size, 0 if mask_id is not None else 1
    allowed = (jnp.arange(cfg.vocab_size) < n_valid) & ~jnp.isin(jnp.arange(cfg.vocab_size),
                                                                  jnp.asarray(ban, jnp.int32))

    @jax.jit
    def pick(x, t):
        visible = (jnp.arange(T) <= t)[None, None, None, :]
        logits = GPT(cfg).apply({"params": params}, x, mask=visible, logits_at=t)[0, 0]
        return jnp.argmax(jnp.where(allowed, logits, -jnp.inf))
    seq = list(prompt)
    for _ in range(n_new):
        x = np.zeros((1, T), np.int32)
        x[0, :len(seq)] = seq
        if mask_id is not None:
            x[0, len(seq)] = mask_id
        seq.append(int(pick(x, len(seq) - shift)))
    return seq[len(prompt):]


def _masks(s: Settings, val, mask_id: int, n_real: int):
    """The fixed corruption of the val windows (one key): every eval uses the same."""
    x = jnp.asarray(val[:, :-1])
    return bert_mask(x, jax.random.key(4321), mask_id, n_real, s.rate)


def _mean(a: np.ndarray):
    return float(a.mean()) if a.size else None     # None: no such position in the sample


def measure(settings: Settings, data, *, bar=None, log=print) -> dict:
    """Train the causal model (next-token loss), the MLM (BERT's loss) and, with
    settings.leakage, the bidirectional model on next-token loss; compare them on the same
    val windows (module docstring: what each predicts).

    Args:
      settings: FULL or TINY (or another Settings).
      data: the study's SmallVocab (its .size ids; [MASK] = .size).
      bar: a tqdm bar, advanced one per training step (steps x 2, or x 3 with leakage).
      log: prints one line as each model starts.

    Returns:
      A JSON-serialisable dict: masked (comparison a, by kind), signal (b), left_to_right
      (c), leakage, samples, train curves, settings, unigram.
    """
    s, V = settings, data.size
    causal_cfg, mlm_cfg = model_config(s, V), model_config(s, V + 1, causal=False)
    val = BatchSampler(data, block_size=s.block_size, batch_size=s.batch_size, seed=0)
    val = val.eval_batches("val", 0, s.eval_batches).reshape(-1, s.block_size + 1)
    inputs, kind = _masks(s, val, V, V)
    chosen = np.asarray(kind != KEPT_OUT)[:, 1:]            # positions j >= 1 (both predict)
    kinds = np.asarray(kind)[:, 1:]
    p = (data.counts + 1) / (data.counts.sum() + V)          # vocab.unigram_loss's distribution
    uni = -np.log(p[val[:, 1:]])                             # (N, T): unigram nll of w[1:]
    eval_at = sorted({*range(0, s.steps + 1, s.eval_every), s.steps})
    common = dict(steps=s.steps, lr=s.lr, warmup=s.warmup, batch_size=s.batch_size,
                  eval_at=eval_at, bar=bar)
    run_mlm = jax.jit(lambda p_: mlm_nll(p_, mlm_cfg, inputs, jnp.asarray(val[:, :-1])))
    run_causal = jax.jit(lambda p_: causal_nll(p_, causal_cfg, jnp.asarray(val)))

    def mlm_eval(params):        # masked-position val loss, at positions j >= 1
        return float(np.asarray(run_mlm(seed_slice(params, 0)))[:, 1:][chosen].mean())

    def causal_eval(params):     # all positions, and the same chosen positions as the MLM's
        nll = np.asarray(run_causal(seed_slice(params, 0)))
        return [float(nll.mean()), float(nll[:, :-1][chosen].mean())]

    log(f"mlm: masked LM, {s.steps} steps ...")
    mlm = train_seeds(mlm_cfg, lambda p_, b, k: mlm_loss(p_, mlm_cfg, b, k, s.rate), data,
                      evaluate=mlm_eval, label="mlm", **common)
    per_step = s.batch_size * s.block_size
    mlm_total = int(mlm.supervised.sum())
    # the causal model is also scored at the steps where it has been supervised on as many
    # tokens as the MLM at each of its evals: loss against supervised tokens, point by point
    mlm_seen = [int(mlm.supervised[0, :k].sum()) for k in eval_at]
    eq_steps = [round(n / per_step) for n in mlm_seen]
    eq = eq_steps[-1]                         # causal step with the MLM's total supervision
    causal_at = sorted({*eval_at, *eq_steps})
    common["eval_at"] = causal_at
    log(f"mlm: causal LM, {s.steps} steps ...")
    causal = train_seeds(causal_cfg, lambda p_, b, k: (loss_fn(p_, causal_cfg, b),
                                                       jnp.int32(b[:, 1:].size)), data,
                         evaluate=causal_eval, label="causal", **common)
    pm, pc = seed_slice(mlm.params, 0), seed_slice(causal.params, 0)
    m_nll = np.asarray(run_mlm(pm))[:, 1:]                   # (N, T - 1): x[j], j >= 1
    c_nll = np.asarray(run_causal(pc))                       # (N, T): w[j + 1]
    c_at = c_nll[:, :-1]                                     # the same tokens as m_nll
    by_kind = {name: {"n": int((kinds == k).sum()), "mlm": _mean(m_nll[kinds == k]),
                      "causal": _mean(c_at[kinds == k]),
                      "unigram": _mean(uni[:, :-1][kinds == k])}
               for name, k in KINDS.items()}
    x = jnp.asarray(val[:, :-1])
    l2r = np.asarray(jax.jit(lambda p_: prefix_nll(p_, mlm_cfg, x, x, V, V))(pm))[:, 1:]
    res = {
        "settings": dataclasses.asdict(s), "vocab": V, "mask_id": V,
        "unigram": unigram_loss(data), "val_tokens": int(val[:, 1:].size),
        "params": {"causal": count_params(causal_cfg), "mlm": count_params(mlm_cfg)},
        "masked": {"n": int(chosen.sum()), "mlm": float(m_nll[chosen].mean()),
                   "causal": float(c_at[chosen].mean()),
                   "unigram": float(uni[:, :-1][chosen].mean()), "by_kind": by_kind},
        "causal_val": float(c_nll.mean()), "causal_val_unigram": float(uni.mean()),
        "left_to_right": {"n": int(l2r.size), "mlm": float(l2r.mean()),
                          "causal": float(c_at.mean()), "unigram": float(uni[:, :-1].mean())},
        "signal": {"causal_per_step": per_step,
                   "mlm_per_step": float(mlm.supervised.mean()), "mlm_total": mlm_total,
                   "causal_total": int(causal.supervised.sum()), "equal_step": eq,
                   "causal_at_equal": causal.evals[eq][1],
                   "eval_steps": eval_at, "mlm_val": [mlm.evals[k] for k in eval_at],
                   "mlm_supervised": mlm_seen, "equal_steps": eq_steps,
                   "causal_at_equal_each": [causal.evals[k][1] for k in eq_steps],
                   "causal_steps": causal_at,
                   "causal_val": [causal.evals[k][0] for k in causal_at],
                   "causal_at_masked": [causal.evals[k][1] for k in causal_at]},
        "train": {"mlm": mlm.losses[0].tolist(), "causal": causal.losses[0].tolist(),
                  "mlm_supervised": mlm.supervised[0].tolist()},
        "seconds": {"mlm": mlm.seconds, "causal": causal.seconds},
    }
    enc = get_tokenizer()
    prompt = [int(t) for t in val[0, :s.prompt]]
    c_new = greedy(pc, causal_cfg, prompt, s.new_tokens, V, ban=(data.unk,))
    res["samples"] = {"prompt": data.decode(prompt, enc),
                      "real": data.decode(val[0, s.prompt:s.prompt + s.new_tokens], enc),
                      "causal": data.decode(c_new, enc),
                      "mlm": data.decode(greedy(pm, mlm_cfg, prompt, s.new_tokens, V, V,
                                                      ban=(data.unk,)), enc)}
    if s.leakage:
        log(f"mlm: bidirectional on next-token loss, {s.steps} steps ...")
        bi_cfg = causal_cfg.replace(causal=False)
        bi = train_seeds(bi_cfg, lambda p_, b, k: (loss_fn(p_, bi_cfg, b),
                                                   jnp.int32(b[:, 1:].size)),
                         data, steps=s.steps, lr=s.lr, warmup=s.warmup,
                         batch_size=s.batch_size, bar=bar, label="bidirectional")
        pb = seed_slice(bi.params, 0)
        seen = np.asarray(jax.jit(lambda p_: causal_nll(p_, bi_cfg, jnp.asarray(val)))(pb))
        pre = np.asarray(jax.jit(lambda p_: prefix_nll(p_, bi_cfg, x, jnp.asarray(val[:, 1:]),
                                                       V))(pb))
        res["leakage"] = {"n": int(seen.size), "as_trained": float(seen.mean()),
                          "prefix_only": float(pre.mean()), "causal": float(c_nll.mean()),
                          "unigram": float(uni.mean()),
                          "train_final": float(bi.losses[0, -10:].mean()),
                          "causal_train_final": float(causal.losses[0, -10:].mean()),
                          "train": bi.losses[0].tolist()}
        res["seconds"]["bidirectional"] = bi.seconds
    return res


def _smooth(y, k: int = 25):
    y = np.asarray(y, np.float64)
    k = max(1, min(k, len(y)))
    return np.convolve(y, np.ones(k) / k, mode="valid")


def figure(res: dict, path: str) -> None:
    """Left: val loss against supervised tokens seen (each model's own objective, and the
    causal one at the MLM's positions). Right: train loss curves (smoothed) incl. leakage."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sig, tr = res["signal"], res["train"]
    causal_seen = [k * sig["causal_per_step"] for k in sig["causal_steps"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    a.plot(sig["mlm_supervised"][1:], sig["mlm_val"][1:], "o-", label="MLM: masked positions")
    a.plot(causal_seen[1:], sig["causal_at_masked"][1:], "s-", label="causal: same positions")
    a.plot(causal_seen[1:], sig["causal_val"][1:], "^:", label="causal: all positions")
    a.axhline(res["masked"]["unigram"], color="gray", ls=":", label="unigram (same positions)")
    a.set_xscale("log")
    a.set(xlabel="supervised tokens seen", ylabel="val loss (nats)",
          title="(b) loss against supervised tokens")
    a.legend(fontsize=7)
    k = 25
    b.plot(_smooth(tr["causal"], k), label="causal (next token)")
    b.plot(_smooth(tr["mlm"], k), label="MLM (chosen positions)")
    if "leakage" in res:
        b.plot(_smooth(res["leakage"]["train"], k), label="bidirectional, next token")
    b.axhline(res["unigram"], color="gray", ls=":")
    b.set(xlabel="step", ylabel=f"train loss ({k}-step mean)", title="train loss per step")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def section(res: dict, out_dir: str) -> str:
    """Draw mlm.png into out_dir and write the report's GPT vs BERT section.

    Args:
      res: what measure returned (or its JSON round trip).
      out_dir: the report's directory (made if missing).

    Returns:
      The section's markdown: heading, tables, the figure link, the verdict.
    """
    os.makedirs(out_dir, exist_ok=True)
    figure(res, os.path.join(out_dir, "mlm.png"))
    s, m, sig, l2r = res["settings"], res["masked"], res["signal"], res["left_to_right"]
    u = res["unigram"]
    L = ["## GPT vs BERT: masked LM against next-token LM\n", "![mlm](mlm.png)\n",
         f"Both models {s['n_layer']} x {s['n_embd']}, {s['steps']} steps of batch "
         f"{s['batch_size']} x {s['block_size']}, the same optimizer and batches; vocabulary "
         f"{res['vocab']} ids (+ [MASK] = id {res['mask_id']} for the MLM, an input only); "
         f"unigram val loss {u:.3f}. All losses on the same {s['eval_batches']} val batches "
         f"({res['val_tokens']:,} tokens), the MLM's corruption drawn once.\n",
         "| what is predicted | from | model | loss | − unigram |", "|---|---|---|---|---|",
         f"| chosen tokens ({m['n']:,}) | both sides, 15% corrupted | MLM | {m['mlm']:.3f} | "
         f"{m['mlm'] - m['unigram']:+.3f} |",
         f"| the same tokens | the left only | causal | {m['causal']:.3f} | "
         f"{m['causal'] - m['unigram']:+.3f} |"]
    for name, k in m["by_kind"].items():
        if not k["n"]:
            continue
        L.append(f"| chosen, input {name} ({k['n']:,}) | both sides | MLM / causal | "
                 f"{k['mlm']:.3f} / {k['causal']:.3f} | {k['mlm'] - k['unigram']:+.3f} / "
                 f"{k['causal'] - k['unigram']:+.3f} |")
    L += [f"| every token, left to right ({l2r['n']:,}) | the left + [MASK] | MLM | "
          f"{l2r['mlm']:.3f} | {l2r['mlm'] - l2r['unigram']:+.3f} |",
          f"| the same tokens | the left | causal | {l2r['causal']:.3f} | "
          f"{l2r['causal'] - l2r['unigram']:+.3f} |"]
    if "leakage" in res:
        k = res["leakage"]
        L += [f"| next token ({k['n']:,}) | the whole window, answer included | "
              f"bidirectional next-token | {k['as_trained']:.3f} | "
              f"{k['as_trained'] - k['unigram']:+.3f} |",
              f"| the same | the prefix only | bidirectional next-token | "
              f"{k['prefix_only']:.3f} | {k['prefix_only'] - k['unigram']:+.3f} |",
              f"| the same | the prefix | causal | {k['causal']:.3f} | "
              f"{k['causal'] - k['unigram']:+.3f} |"]
    L += ["", f"Training signal: the causal loss is taken on all {sig['causal_per_step']} "
          f"tokens of a step, the MLM's on {sig['mlm_per_step']:.1f} on average "
          f"({sig['mlm_per_step'] / sig['causal_per_step']:.1%}); in {s['steps']} steps the "
          f"MLM was supervised on {sig['mlm_total']:,} tokens, which the causal model had "
          f"seen by step {sig['equal_step']}: its loss at the MLM's positions then was "
          f"{sig['causal_at_equal']:.3f}, the MLM's after all {s['steps']} steps "
          f"{m['mlm']:.3f} (unigram {m['unigram']:.3f}). Point by point (loss at the "
          "MLM's chosen val positions; the causal step has seen as many supervised tokens; "
          "its learning rate is then higher in the cosine schedule than the MLM's):\n",
          "| MLM step | supervised tokens | MLM | causal step | causal |", "|---|---|---|---|---|",
          *[f"| {k} | {n:,} | {a:.3f} | {e} | {c:.3f} |" for k, n, a, e, c in zip(
              sig["eval_steps"], sig["mlm_supervised"], sig["mlm_val"], sig["equal_steps"],
              sig["causal_at_equal_each"]) if k], "",
          f"Greedy continuations of a val prompt ({s['new_tokens']} tokens, UNK barred): "
          + "; ".join(f"{k} `{_one_line(v)}`" for k, v in res["samples"].items()) + ".\n",
          _verdict(res) + "\n"]
    return "\n".join(L)


def _one_line(text: str) -> str:
    return text.replace("\n", "⏎").replace("`", "'")


def _verdict(res: dict) -> str:
    m, l2r, sig = res["masked"], res["left_to_right"], res["signal"]
    a = ("held" if m["mlm"] < m["causal"] else "did not show at this budget")
    b = ("better" if m["mlm"] < sig["causal_at_equal"] else "no better")
    c = ("only the causal model predicts left to right better than unigram"
         if l2r["causal"] < l2r["unigram"] <= l2r["mlm"] else
         "the causal model predicts left to right better than the MLM"
         if l2r["causal"] < l2r["mlm"] else "the MLM predicted left to right as well")
    out = (f"That two-sided context predicts a masked token better than the left alone "
           f"{a} (MLM {m['mlm']:.3f} against causal {m['causal']:.3f} at the same tokens, "
           f"equal steps); per supervised token the MLM was {b} ({m['mlm']:.3f} against "
           f"{sig['causal_at_equal']:.3f}); generating, {c}.")
    if "leakage" in res:
        k = res["leakage"]
        out += (f" A bidirectional model trained on next-token loss scores "
                f"{k['as_trained']:.3f} with the answer in view and {k['prefix_only']:.3f} "
                f"from the prefix (causal {k['causal']:.3f}, the same batches).")
    return out
