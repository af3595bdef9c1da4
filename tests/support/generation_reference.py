"""References and fixtures shared by test_decode, test_sampling and test_generation: random
parameters that make varied tokens, prompts, the full-forward logits a decoder must reproduce,
and a chi-squared test of sampled token counts."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

import gpt_jax
from gpt_jax.model.gpt import GPT
from gpt_jax.generation.sampling import sample_logits


def tiny(**kw):
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=128)
    return gpt_jax.GPTConfig(**{**base, **kw})


@functools.partial(jax.jit, static_argnums=(0,))
def _noisy_init(cfg, key, std):
    leaves, tree = jax.tree_util.tree_flatten(GPT(cfg).init(key, jnp.zeros((1, 1), jnp.int32)))
    keys = jax.random.split(key, len(leaves))
    return tree.unflatten([x + std * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def random_params(cfg, seed=0, std=0.3):
    """GPT-2 init plus noise on every tensor: a fresh init only repeats its input token."""
    return _noisy_init(cfg, jax.random.key(seed), std)["params"]


def prompts_of(lengths, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(0, vocab, n)) for n in lengths]


def full_forward_logits(params, cfg, prompts, new):
    """Reference: for each row, one causal forward pass (no cache, no padding in front) over
    prompt + generated tokens; the logits at len(prompt) - 1 + i predicted new token i."""
    B, N = new.shape
    L = max(len(p) for p in prompts) + N
    seqs = np.zeros((B, L), np.int32)  # right-padded: causal attention never looks ahead
    for b, p in enumerate(prompts):
        seqs[b, :len(p) + N] = list(p) + list(new[b])
    logits = np.asarray(jax.jit(lambda p, x: GPT(cfg).apply({"params": p}, x))(params, seqs))
    return np.stack([logits[b, len(p) - 1:len(p) - 1 + N] for b, p in enumerate(prompts)])


# Most tests share one config, batch and length, so they share compiled programs.
CFG = tiny()
LENGTHS = [3, 9, 1]  # one bucket of 16
N_NEW = 12


def draws_of(logits, n, **kw):
    keys = jax.random.split(jax.random.key(123), n)
    draws = jax.jit(jax.vmap(lambda k: sample_logits(logits, k, **kw)))(keys)
    return np.bincount(np.asarray(draws), minlength=logits.shape[-1])


def chi2_pvalue(counts, probs):
    keep = probs > 0
    assert counts[~keep].sum() == 0, "sampled a token of probability 0"
    expected = probs[keep] * counts.sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    return stats.chi2.sf(stat, keep.sum() - 1)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()
