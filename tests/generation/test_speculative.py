"""Speculative decoding (gpt_jax.generation.speculative): greedy output token-identical to plain
greedy generate() for prompt lookup and a draft model, on random and briefly trained weights,
rows of unequal length, eos_id and stop strings; sampled output distributed as the plain
sampler's (chi-squared against the exact distribution on a tiny vocabulary); one program per
shape; clear refusals."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpt_jax.generation.speculative as speculative
from gpt_jax.errors import UserError
from gpt_jax.generation.decoding import compile_generate, generate, generate_speculative
from gpt_jax.generation.verify import warp
from gpt_jax.model.gpt import GPT
from gpt_jax.model.tokenizer import get_tokenizer

from generation_reference import CFG, chi2_pvalue, prompts_of, random_params, tiny

N = 16
DRAFT = CFG.replace(n_layer=1)


def repetitive_prompts(seed=0):
    """Rows of unequal length (one bucket) that repeat themselves: lookup has matches."""
    base = prompts_of([4, 2, 6], CFG.vocab_size, seed)
    return [(p * 5)[:n] for p, n in zip(base, (13, 5, 16))]


@functools.lru_cache(maxsize=None)
def trained_params(cfg, steps=60):
    """cfg's params after a few Adam steps on one repeated 6-token cycle: a model that copies,
    as a trained one does on a document it continues, so proposals are mostly accepted."""
    params = random_params(cfg, seed=3, std=0.02)
    cycle = np.array([7, 3, 90, 41, 5, 66] * 11, np.int32)
    batch = np.stack([cycle[i:i + 33] for i in range(6)])
    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, state):
        loss, grad = jax.value_and_grad(lambda p: GPT(cfg).apply(
            {"params": p}, batch[:, :-1], targets=batch[:, 1:]))(params)
        updates, state = opt.update(grad, state)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


def test_prompt_lookup_greedy_equals_plain_greedy_random_weights_unequal_rows_and_eos():
    params = random_params(CFG)
    prompts = repetitive_prompts()
    ref = np.asarray(generate(params, CFG, prompts, N, temperature=0))
    out, stats = generate_speculative(params, CFG, prompts, N, temperature=0,
                                      prompt_lookup_num_tokens=4)
    np.testing.assert_array_equal(np.asarray(out), ref)
    assert stats.accepted.sum() > 0 and len(set(stats.steps)) > 1   # rows advanced unequally
    np.testing.assert_array_equal(stats.tokens, N)
    assert np.all(stats.steps + stats.accepted == N - 1)    # the first token is the prefill's
    # eos_id: a token that row 0 makes mid-way; the rows that make it stop there, pad after
    eos = int(ref[0, 6])
    want = np.asarray(generate(params, CFG, prompts, N, temperature=0, eos_id=eos, pad_id=0))
    assert (want == 0).any()
    got = generate(params, CFG, prompts, N, temperature=0, eos_id=eos, pad_id=0,
                   prompt_lookup_num_tokens=4)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("stop_in_prompt", [True, False])
def test_speculative_greedy_with_stop_strings_equals_plain_greedy(stop_in_prompt):
    """Stop strings the rows make (one spanning two tokens, one a single byte, one that ends
    in the prompt's last token plus the first new one): lookup and a draft stop each row
    where plain greedy does, pad after, in one call whose rows advance unequally."""
    params = random_params(CFG)
    prompts = repetitive_prompts()
    free = np.asarray(generate(params, CFG, prompts, N, temperature=0))
    enc = get_tokenizer()

    def text(ids):
        try:
            return enc.decode_bytes(list(map(int, ids))).decode("utf-8")
        except UnicodeDecodeError:
            return None
    cands = [text(free[0, 5:7]), text(free[1, 9:10]), text([prompts[2][-1], free[2, 0]])]
    stops = [t for t in cands if t]
    assert len(stops) >= 2
    settings = dict(temperature=0, stop=stops, stop_in_prompt=stop_in_prompt, pad_id=0)
    want = np.asarray(generate(params, CFG, prompts, N, **settings))
    assert (want == 0).any()                                      # some row stopped
    for spec in (dict(prompt_lookup_num_tokens=4),
                 dict(draft=(random_params(DRAFT, seed=4), DRAFT), num_draft_tokens=3)):
        got = np.asarray(generate(params, CFG, prompts, N, **settings, **spec))
        np.testing.assert_array_equal(got, want)


def test_draft_greedy_equals_plain_greedy_and_a_perfect_draft_takes_k_plus_one_a_step():
    params = random_params(CFG)
    prompts = repetitive_prompts(1)
    ref = np.asarray(generate(params, CFG, prompts, N, temperature=0))
    out, stats = generate_speculative(params, CFG, prompts, N, temperature=0,
                                      draft=(random_params(DRAFT, seed=4), DRAFT),
                                      num_draft_tokens=4)
    np.testing.assert_array_equal(np.asarray(out), ref)
    # the target as its own draft: every proposal accepted, K + 1 tokens per verify step
    out, stats = generate_speculative(params, CFG, prompts, N, temperature=0,
                                      draft=(params, CFG), num_draft_tokens=3)
    np.testing.assert_array_equal(np.asarray(out), ref)
    np.testing.assert_array_equal(stats.steps, -(-(N - 1) // 4))
    np.testing.assert_array_equal(stats.accepted, N - 1 - stats.steps)


def test_trained_weights_accept_most_proposals_and_stay_token_identical():
    params = trained_params(CFG)
    cycle = [7, 3, 90, 41, 5, 66]
    prompts = [cycle * 2 + [7], cycle[2:] + [7, 3], [90, 41]]
    ref = np.asarray(generate(params, CFG, prompts, N, temperature=0))
    assert (ref[0, :6] == [3, 90, 41, 5, 66, 7]).all()   # it learnt to copy the cycle
    lookup, ls = generate_speculative(params, CFG, prompts, N, temperature=0,
                                      prompt_lookup_num_tokens=4)
    # the draft: the target's first block alone (its embeddings and head shared), no training
    skip = {name: p for name, p in params.items() if name != "h_1"}
    draft, ds = generate_speculative(params, CFG, prompts, N, temperature=0,
                                     draft=(skip, DRAFT), num_draft_tokens=4)
    np.testing.assert_array_equal(np.asarray(lookup), ref)
    np.testing.assert_array_equal(np.asarray(draft), ref)
    for stats in (ls, ds):
        assert stats.steps.sum() < stats.accepted.sum()   # over 2 tokens per target forward


def test_one_program_per_shape():
    params = random_params(CFG)
    generate(params, CFG, repetitive_prompts(), N, temperature=0, prompt_lookup_num_tokens=4)
    before = speculative.SPECULATOR.trace_count
    other = prompts_of([7, 1, 11], CFG.vocab_size, seed=9)     # same bucket, other rows
    generate(params, CFG, other, N, temperature=0, prompt_lookup_num_tokens=4, eos_id=3)
    assert speculative.SPECULATOR.trace_count == before       # (sampling values: below)


# -- sampling: the tokens' distribution is the target's ---------------------------------------

V = 8
SMALL = tiny(vocab_size=V, n_embd=16, n_head=2, n_layer=1)
PROMPT = [1, 2, 3, 1, 2, 5, 1, 2]


def exact_marginals(params, cfg, prompt, n, **filters):
    """Each of the first n new tokens' marginal distribution (n, V) under plain sampling with
    these filters, by enumerating every sequence of n - 1 tokens (V^(n-1) forwards)."""
    seqs = np.array([prompt + list(s) for s in itertools.product(range(V), repeat=n - 1)])
    logits = GPT(cfg).apply({"params": params}, jnp.asarray(seqs, jnp.int32))
    logits = logits[:, len(prompt) - 1:]                               # (M, n, V)
    probs = np.asarray(jax.nn.softmax(warp(logits, **filters), axis=-1), np.float64)
    joint = np.ones(len(seqs))                                         # p(prefix s)
    out = []
    for i in range(n):
        step = probs[:, i]                                             # p(t_i | prefix)
        # each sequence counted once per value of its unused tail: divide by that count
        out.append((joint[:, None] * step).sum(0) / V ** (n - 1 - i))
        if i < n - 1:
            joint = joint * step[np.arange(len(seqs)), seqs[:, len(prompt) + i]]
    return np.stack(out)


@pytest.mark.parametrize("how,filters", [
    ("lookup", dict(temperature=1.0, top_k=6)),
    ("draft", dict(temperature=0.8, top_k=5)),
])
def test_speculative_sampling_preserves_the_distribution(how, filters):
    params = random_params(SMALL, seed=2, std=0.8)
    n, rows = 4, 3000
    if how == "lookup":
        spec = dict(prompt_lookup_num_tokens=3)
    else:
        dcfg = SMALL.replace(n_embd=8)
        spec = dict(draft=(random_params(dcfg, seed=7, std=0.8), dcfg), num_draft_tokens=3)
    out, stats = generate_speculative(params, SMALL, [PROMPT] * rows, n, key=11, **filters,
                                      **spec)
    out = np.asarray(out)
    assert 0 < stats.accepted.sum() < stats.steps.sum() * 3   # some rejected, some accepted
    before = speculative.SPECULATOR.trace_count               # other values: the same program
    generate(params, SMALL, [PROMPT] * rows, n, key=3, temperature=0.5, top_k=7, **spec)
    assert speculative.SPECULATOR.trace_count == before
    want = exact_marginals(params, SMALL, PROMPT, n, **filters)
    for i in range(1, n):             # token 0 is the prefill's draw; 1.. are verified ones
        counts = np.bincount(out[:, i], minlength=V)
        assert chi2_pvalue(counts, want[i]) > 1e-3, (i, counts, want[i] * rows)


# -- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("settings,match", [
    (dict(prompt_lookup_num_tokens=2, draft=(None, CFG)), "not both"),
    (dict(num_draft_tokens=3), "needs draft"),
    (dict(max_matching_ngram_size=2), "needs prompt_lookup"),
    (dict(prompt_lookup_num_tokens=0), ">= 1"),
    (dict(prompt_lookup_num_tokens=2, no_repeat_ngram_size=2), "not with no_repeat_ngram"),
    (dict(prompt_lookup_num_tokens=2, repetition_penalty=1.2), "repetition_penalty"),
    (dict(prompt_lookup_num_tokens=2, num_beams=2), "do not combine"),
    (dict(draft=({}, tiny(vocab_size=64))), "vocab_size"),
    (dict(draft=("params", "cfg")), "tuple"),
])
def test_bad_speculative_settings_are_one_user_error(settings, match):
    params = random_params(CFG)
    with pytest.raises(UserError, match=match):
        generate(params, CFG, [[1, 2, 3]], 4, temperature=0, **settings)


def test_compile_generate_refuses_speculation():
    with pytest.raises(UserError, match="generate_speculative"):
        compile_generate(random_params(CFG), CFG, [[1, 2]], 4, prompt_lookup_num_tokens=2)
