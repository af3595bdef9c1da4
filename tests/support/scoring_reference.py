"""Shared by the scoring, tasks and eval CLI tests: a fully random GPT and the same weights in
transformers' GPT2LMHeadModel, which computes the reference log-probs one window at a time with
none of gpt_jax.evaluation.scoring's batching, bucketing or gathering."""
import functools

import jax
import numpy as np
from flax import traverse_util

import gpt_jax
from gpt_jax.model.tokenizer import EOT_ID


def random_params(cfg, seed=0):
    """Every tensor random (a fresh GPT-2 has zero biases and unit LayerNorms, under which a
    swapped or dropped parameter can pass): N(0, 0.1), LayerNorm scales 1 + N(0, 0.1)."""
    flat = traverse_util.flatten_dict(gpt_jax.init_params(cfg, jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    out = {}
    for path, x in flat.items():
        noise = (0.1 * rng.standard_normal(x.shape)).astype(np.float32)
        out[path] = jax.numpy.asarray(1.0 + noise if path[-1] == "scale" else noise)
    return traverse_util.unflatten_dict(out)


def hf_model(params, cfg):
    from gpt_jax.checkpoint.hf import to_transformers
    return to_transformers(params, cfg)


@functools.lru_cache(maxsize=2)
def reference_pair(cfg, seed=0):
    """(random params, the same weights in transformers), made once per test session."""
    params = random_params(cfg, seed)
    return params, hf_model(params, cfg)


def hf_logprobs(model, inputs, positions=None):
    """float64 log-softmax of transformers' logits for one input sequence: (L, V), or
    (len(positions), V) at those positions only."""
    import torch
    with torch.no_grad():
        logits = model(torch.tensor([list(inputs)], dtype=torch.long)).logits[0]
    if positions is not None:
        logits = logits[list(positions)]
    return torch.log_softmax(logits.double(), dim=-1).numpy()


def top_two_gap(logp):
    """(argmax, its margin over the runner-up) of one row of log-probs: greedy checks use
    tokens whose margin is far above float32 noise, so no CPU flips them."""
    top2 = np.argsort(logp)[-2:]
    return int(top2[1]), float(logp[top2[1]] - logp[top2[0]])


def ref_loglikelihood(model, block_size, context, continuation):
    """lm-eval's rule, spelt out for one request: (sum log p, all greedy)."""
    context = list(context) or [EOT_ID]
    inputs = (context + list(continuation))[-(block_size + 1):][:-1]
    first = len(inputs) - len(continuation)
    logp = hf_logprobs(model, inputs, range(first, len(inputs)))
    cont = np.asarray(continuation)
    return (float(logp[np.arange(len(cont)), cont].sum()),
            bool((logp.argmax(-1) == cont).all()))


def ref_token_logprobs(model, block_size, tokens, stride):
    """Per token: the window that scores it (starts 0, stride, ..., the last moved left to end
    at the end; the first window that predicts a token scores it), and transformers' log p of
    it from that window's inputs up to the token (read off one forward pass per window: a
    causal model's output at a position depends only on the inputs up to it)."""
    n = len(tokens)
    seq = [EOT_ID] + list(tokens)
    starts = list(range(0, max(n - block_size, 0), stride)) + [max(n - block_size, 0)]
    owner = [next(s for s in starts if s <= i < s + block_size) for i in range(n)]
    out = np.zeros(n)
    for s in sorted(set(owner)):
        mine = [i for i in range(n) if owner[i] == s]     # token i is predicted at input i
        logp = hf_logprobs(model, seq[s:mine[-1] + 1], [i - s for i in mine])
        out[mine] = logp[np.arange(len(mine)), [tokens[i] for i in mine]]
    return out
