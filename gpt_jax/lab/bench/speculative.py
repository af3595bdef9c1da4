"""Section "speculative": greedy decoding at batch 1 with prompt lookup and with a draft model
against our plain greedy loop and transformers' prompt lookup / assisted generation, on a
workload whose output copies from its input: the edit task, a passage of the built-in corpus
followed by its first tokens, which a model that copies continues with the rest of the passage.

Models: a target (4 x 128, cpu-small's) and a draft (2 x 32), GPT-2's vocabulary, trained from
scratch by the library's train step and optimizer (cpu-small's AdamW, decayed over
`spec_steps` steps, the draft twice as many) on one sequence: the passage, then the passage
again. They have memorised this edit; they do not copy in general. Models that copy any
passage need induction heads, and none formed in the ~90 s of CPU a model gets here: 80-100
steps of 8 x 128 tokens of this task on 40 corpus documents, or on repeated random tokens,
ended at loss ~6.6 (the unigram level) and copied 5-9% of held-out passages. Models trained
on random windows of the one document (the earlier recipe: 200 steps, loss 0.33) learnt its
text but not which of its lines the prompt repeats: after an ambiguous token (".\n" starts
many lines) their greedy output jumped to another line, so 5% of it was the passage's and
lookup proposals were accepted 1.5% of the time. What is measured is therefore the decode
loop's cost when proposals are right, not a model's ability to copy. Every row's tokens are
compared with our plain greedy tokens (config greedy_tokens_equal_ours), and the config records
how many of the new tokens are the passage's (copied_fraction).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.data.builtin import documents
from gpt_jax.data.prepare import builtin_sources
from gpt_jax.generation.decoding import generate, generate_speculative
from gpt_jax.lab.bench.harness import Context, Result, ratio_row, result_from_timing
from gpt_jax.lab.bench.peers import have_peers, params_to_hf
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import init_params
from gpt_jax.model.tokenizer import get_tokenizer
from gpt_jax.train.config import resolve_config
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.train.state import init_state
from gpt_jax.train.steps import make_train_step
from gpt_jax.utils.timing import time_calls

LOOKUP_K = 10   # transformers' prompt_lookup_num_tokens default in its docs and candidate
                # generator (candidate_generator.py:1045, num_output_tokens=10)
DRAFT_K = 4


def corpus_tokens(n_docs: int) -> list[np.ndarray]:
    """The built-in corpus' first n_docs documents (of more than 600 tokens), GPT-2 BPE."""
    enc = get_tokenizer()
    docs, _ = documents(builtin_sources()[:4 * n_docs])
    out = [np.asarray(enc.encode_ordinary(d), np.int32) for d in docs]
    return [d for d in out if len(d) > 600][:n_docs]


def train(cfg: GPTConfig, row: np.ndarray, steps: int, seed: int):
    """cfg's params after `steps` steps of the library's train step (cpu-small's AdamW and
    schedule, decayed over `steps`) on one sequence row int32 (T + 1,): here the edit, which
    the model memorises (a batch of one: copies of the same row would add only work)."""
    tc = resolve_config("cpu-small", {"max_iters": steps, "lr_decay_iters": steps,
                                      "warmup_iters": max(1, steps // 10)})
    tx, schedule = make_optimizer(tc)
    step = make_train_step(cfg, tx, schedule, grad_clip=tc.grad_clip, health=False)
    state = init_state(init_params(cfg, jax.random.key(seed)), tx, jax.random.key(seed))
    batch = jnp.asarray(row, jnp.int32)[None, None]                         # (1, 1, T + 1)
    for _ in range(steps):
        state, metrics = step(state, batch)
    return state.params, float(metrics["loss"])


def run(ctx: Context) -> list[Result]:
    """Batch 1: plain greedy, prompt lookup (K = 10) and a draft model (K = 4), ours and
    transformers', interleaved; acceptance rate (accepted / proposed slots), tokens per verify
    step and the speed-ups. Options: spec_steps (training steps per model)."""
    tiny = ctx.tiny
    steps = ctx.options.get("spec_steps", 3 if tiny else 150)
    # the passage, then its first 8 tokens; a longer passage gives the proposals more to get
    # right per call, so per-call costs (prefill, dispatch) weigh less
    H, shown = (48 if tiny else 160), 8
    P, N = H + shown, H - shown
    # the target: cpu-small's model (train.py's default); the draft: 2 layers, a quarter wide.
    # block_size leaves room past P + N: transformers' verify forwards run past max_length
    L = P + N + 2 * LOOKUP_K
    target = GPTConfig(n_layer=2 if tiny else 4, n_head=4, n_embd=64 if tiny else 128,
                       block_size=L)
    draft = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=L)
    doc = corpus_tokens(4)[3]
    passage = doc[:H]
    row = np.concatenate([passage, doc[:H + 1]])           # the edit as trained on: (2H + 1,)
    t0 = time.perf_counter()
    params, loss = train(target, row, steps, seed=0)
    train_s = time.perf_counter() - t0
    # the draft twice the steps: at a quarter the width a step costs a third, and a draft
    # that has not finished memorising (loss 2.6 after 150 steps) wastes verify steps
    dparams, dloss = train(draft, row, 2 * steps, seed=1)
    prompt = np.concatenate([passage, passage[:shown]])[None]             # (1, P)
    conf = {"target": f"{target.n_layer}x{target.n_embd}",
            "draft": f"{draft.n_layer}x{draft.n_embd}", "train_steps": steps,
            "draft_train_steps": 2 * steps,
            "train_s": round(train_s, 1), "train_loss": round(loss, 4),
            "draft_train_s": round(time.perf_counter() - t0 - train_s, 1),
            "draft_train_loss": round(dloss, 4), "batch": 1, "prompt": P, "new_tokens": N,
            "lookup_k": LOOKUP_K, "draft_k": DRAFT_K, "dtype": "float32", "greedy": True}
    # every row through generate(): the same host-side checks per call on each side
    ref = np.asarray(generate(params, target, prompt, N, temperature=0))
    conf["copied_fraction"] = float((ref[0] == passage[shown:]).mean())
    spec = {"lookup": dict(prompt_lookup_num_tokens=LOOKUP_K),
            "draft": dict(draft=(dparams, draft), num_draft_tokens=DRAFT_K)}
    # the draft model decoding alone: the cost of one of its proposal steps
    fns = {"plain": lambda: generate(params, target, prompt, N, temperature=0),
           "draft alone": lambda: generate(dparams, draft, prompt, N, temperature=0)}
    stats, equal = {}, {}
    for name, kw in spec.items():
        t0 = time.perf_counter()
        out, stats[name] = generate_speculative(params, target, prompt, N, temperature=0,
                                                **kw)
        conf[f"{name}_first_call_s"] = round(time.perf_counter() - t0, 2)   # compile included
        equal[name] = float((np.asarray(out) == ref).mean())
        fns[name] = lambda kw=kw: generate_speculative(params, target, prompt, N,
                                                       temperature=0, **kw)[0]
    if have_peers(ctx, "speculative"):
        import torch
        hf, hf_draft = params_to_hf(params, target), params_to_hf(dparams, draft)
        hf_draft.generation_config.num_assistant_tokens = DRAFT_K   # as ours: a fixed K
        hf_draft.generation_config.num_assistant_tokens_schedule = "constant"
        hf_draft.generation_config.assistant_confidence_threshold = 0.0
        ids = torch.from_numpy(prompt.astype(np.int64))
        hf_kw = {"hf": {}, "hf lookup": dict(prompt_lookup_num_tokens=LOOKUP_K),
                 "hf draft": dict(assistant_model=hf_draft)}
        for name, kw in hf_kw.items():
            def call(kw=kw):
                with torch.inference_mode():
                    return hf.generate(ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=N, do_sample=False, **kw)
            equal[name] = float((call()[:, P:].numpy() == ref).mean())
            fns[name] = call
    t = time_calls(fns, ctx.repeats, ctx.warmup)
    row = {name: result_from_timing(
        "speculative", f"{'ours ' if not name.startswith('hf') else 'HF '}"
        f"{'greedy' if name in ('plain', 'hf') else name.removeprefix('hf ')} b1", t[name],
        work=N, metric="tokens/s", unit="tokens/s",
        config={**conf, "greedy_tokens_equal_ours": equal.get(name, 1.0)})
        for name in fns if name != "draft alone"}
    # what a step costs (a call's median over its steps, prefill included): speculation pays
    # where tokens per verify step exceed a verify step's cost in one-token steps
    rows = list(row.values()) + [
        Result("speculative", "ours greedy b1", "time per token", t["plain"].median / N * 1e3,
               "ms", conf),
        Result("speculative", "ours draft model alone b1", "time per token",
               t["draft alone"].median / N * 1e3, "ms", conf)]
    for name, s in stats.items():
        k = LOOKUP_K if name == "lookup" else DRAFT_K
        made = int(s.tokens.sum()) - 1               # the first token is the prefill's
        rows += [
            Result("speculative", f"ours {name} b1", "acceptance rate",
                   float(s.accepted.sum() / (s.steps.sum() * k)), "fraction", conf),
            Result("speculative", f"ours {name} b1", "tokens per verify step",
                   made / float(s.steps.sum()), "tokens", conf),
            Result("speculative", f"ours {name} b1", "time per verify step",
                   t[name].median / float(s.steps.sum()) * 1e3, "ms", conf),
            ratio_row("speculative", f"ours {name} / ours greedy b1", row[name], row["plain"],
                      conf)]
        peer = f"hf {name}"
        if peer in row:
            rows += [ratio_row("speculative", f"ours {name} / HF {name} b1", row[name],
                               row[peer], conf),
                     ratio_row("speculative", f"HF {name} / HF greedy b1", row[peer],
                               row["hf"], conf)]
    return rows
