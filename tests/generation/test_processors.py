"""gpt_jax.generation.processors and generate()'s processors against transformers' GPT2LMHeadModel.generate
with the same weights (every tensor random), on 20 prompts of unequal length: greedy with each
processor token for token; the warpers (temperature, top-k, top-p, min-p) as transformers' on
the same logits; seeded sampling with processors reproducible; bad settings one-line errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_jax
import gpt_jax.generation as generation
from gpt_jax.generation.sampling import apply_temperature, min_p_filter, top_k_filter, top_p_filter

from generation_reference import CFG, prompts_of, random_params

torch = pytest.importorskip("torch", reason="needs torch (pip install .[test])")
transformers = pytest.importorskip("transformers", reason="needs transformers (.[test])")

LENGTHS = [1, 3, 5, 7, 2, 9, 11, 4, 13, 6, 15, 8, 3, 10, 12, 1, 14, 5, 16, 7]   # 20 prompts
N = 16
MARGIN = 1e-3                      # compare tokens while the decision is above float32 noise


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)       # a tiny model: threads only contend (10x slower on 2 cores)
    params = random_params(CFG, seed=21, std=0.3)
    from gpt_jax.checkpoint.hf import to_transformers
    return params, to_transformers(params, CFG).eval()


def hf_generate(hf, prompt, **kw):
    """One prompt alone (no padding on the HF side): (new tokens, processed scores (n, V))."""
    ids = torch.tensor([list(map(int, prompt))])
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N,
                          do_sample=False, output_scores=True, return_dict_in_generate=True,
                          **kw)
    return out.sequences[0, ids.shape[1]:].numpy(), torch.stack(out.scores)[:, 0].numpy()


def decided(scores):
    """How many leading steps had a top-2 margin above MARGIN (later ones may flip on rounding)."""
    top = np.sort(np.where(np.isfinite(scores), scores, -1e30), axis=-1)
    small = np.flatnonzero(top[:, -1] - top[:, -2] < MARGIN)
    return small[0] if small.size else len(scores)


def assert_as_transformers(params, hf, ours_kw, hf_kw, pad=None):
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=3)
    ours = np.asarray(generation.generate(params, CFG, prompts, N, temperature=0, **ours_kw))
    compared = total = 0
    for b, p in enumerate(prompts):
        ref, scores = hf_generate(hf, p, **hf_kw)
        n = decided(scores)
        np.testing.assert_array_equal(ours[b, :n], ref[:n], err_msg=f"row {b} {ours_kw}")
        if n == len(ref) and len(ref) < N:   # transformers stopped: the rest is padding
            assert (ours[b, len(ref):] == pad).all(), (b, ours[b], ref)
        compared, total = compared + n, total + len(ref)
    assert compared > 0.8 * total
    return ours


@pytest.mark.parametrize("kw", [dict(repetition_penalty=1.8), dict(repetition_penalty=0.7),
                                dict(no_repeat_ngram_size=2)])
def test_greedy_processor_equals_transformers(model, kw):
    params, hf = model
    ours = assert_as_transformers(params, hf, kw, kw)
    plain = np.asarray(generation.generate(params, CFG, prompts_of(LENGTHS, CFG.vocab_size,
                                                                    seed=3), N, temperature=0))
    assert (ours != plain).any(1).sum() >= 5          # the processor changed many rows


def test_greedy_processors_together_with_eos_and_min_new_tokens(model):
    """All three processors, eos and min_new_tokens at once; rows stop at eos at different
    steps, and eos never comes before min_new_tokens."""
    params, hf = model
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=3)
    free = np.asarray(generation.generate(params, CFG, prompts, N, temperature=0,
                                          repetition_penalty=1.3, no_repeat_ngram_size=3))
    eos = int(np.bincount(free[:, :6].ravel()).argmax())    # an id many rows emit early
    kw = dict(repetition_penalty=1.3, no_repeat_ngram_size=3, min_new_tokens=4)
    ours = assert_as_transformers(params, hf, dict(kw, eos_id=eos), dict(
        kw, eos_token_id=eos, pad_token_id=eos), pad=eos)
    first = [np.flatnonzero(r == eos)[0] for r in ours if (r == eos).any()]
    assert min(first) >= 4 and len(set(first)) > 1
    assert any(f < 4 for r in free for f in np.flatnonzero(r[:4] == eos))  # min_new bit


def test_warpers_equal_transformers_on_the_same_logits():
    """temperature, top-k, top-p, min-p: the ids kept and their tempered logits are those of
    transformers' warpers in its order (ours runs top-k before temperature: the same set)."""
    from transformers.generation import logits_process as lp
    logits = np.asarray(jax.random.normal(jax.random.key(0), (16, 200)) * 3, np.float32)
    for t, k, p, m in [(0.7, 20, 0.9, 0.05), (1.5, 50, 0.5, None), (1.0, None, None, 0.2),
                       (2.0, 5, None, 0.3)]:
        x = jnp.asarray(logits)
        if k:
            x = top_k_filter(x, k)
        x = apply_temperature(x, t)
        if p:
            x = top_p_filter(x, p)
        if m:
            x = min_p_filter(x, m)
        warpers = [lp.TemperatureLogitsWarper(t)] + ([lp.TopKLogitsWarper(k)] if k else []) + \
            ([lp.TopPLogitsWarper(p)] if p else []) + ([lp.MinPLogitsWarper(m)] if m else [])
        ref = torch.tensor(logits)
        for w in warpers:
            ref = w(None, ref)
        ref = ref.numpy()
        np.testing.assert_array_equal(np.isfinite(x), np.isfinite(ref), err_msg=str((t, k, p, m)))
        kept = np.isfinite(ref)
        shift = ref.max(-1, keepdims=True)  # ours moves the maximum to 0 first
        np.testing.assert_allclose(np.asarray(x)[kept], (ref - shift)[kept], atol=1e-5)
        assert 1 < kept.sum(-1).mean() < 200


def test_processors_equal_transformers_on_the_same_logits():
    """The processors alone, on sequences full of repeats (including a row too short for the
    n-gram): the same logits as transformers' processors."""
    from transformers.generation import logits_process as lp
    import gpt_jax.generation.processors as processors
    rng = np.random.default_rng(0)
    B, L, V = 6, 12, 10
    seqs = rng.integers(0, V, (B, L))
    start = np.array([0, 0, 3, 7, 10, 11])     # left padding: row b holds seqs[b, start:]
    logits = rng.normal(size=(B, V)).astype(np.float32) * 2
    for n in (1, 2, 3):
        hist = jnp.asarray(np.where(np.arange(L)[None] >= start[:, None], seqs, V))
        ours = np.asarray(processors.no_repeat_ngram(jnp.asarray(logits), jnp.pad(
            hist, ((0, 0), (0, 4)), constant_values=V), L, jnp.asarray(start), n))
        for b in range(B):
            ref = lp.NoRepeatNGramLogitsProcessor(n)(torch.tensor(seqs[b:b + 1, start[b]:]),
                                                     torch.tensor(logits[b:b + 1])).numpy()
            np.testing.assert_array_equal(ours[b], ref[0], err_msg=f"n={n} row {b}")
    seen = processors.initial_seen(jnp.asarray(seqs), jnp.asarray(start), V)
    ours = np.asarray(processors.repetition_penalty(jnp.asarray(logits), seen, 1.7))
    for b in range(B):
        ref = lp.RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor(seqs[b:b + 1, start[b]:]),
                                                       torch.tensor(logits[b:b + 1])).numpy()
        np.testing.assert_allclose(ours[b], ref[0], rtol=1e-6)


def test_seeded_sampling_with_processors_reproduces():
    params = random_params(CFG, seed=5, std=0.1)
    prompts = prompts_of(LENGTHS[:6], CFG.vocab_size, seed=5)
    kw = dict(temperature=1.2, top_k=40, top_p=0.95, min_p=0.02, repetition_penalty=1.2,
              no_repeat_ngram_size=2)
    a = np.asarray(generation.generate(params, CFG, prompts, N, key=3, **kw))
    b = np.asarray(generation.generate(params, CFG, prompts, N, key=3,
                                       config=gpt_jax.GenerationConfig(**kw)))
    c = np.asarray(generation.generate(params, CFG, prompts, N, key=4, **kw))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    for row in a:   # no bigram twice in a row's new tokens
        grams = list(zip(row[:-1], row[1:]))
        assert len(grams) == len(set(grams))


@pytest.mark.parametrize("kw,fragment", [
    (dict(repetition_penalty=-1.0), "repetition_penalty must be a positive number"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size must be an integer >= 0"),
    (dict(no_repeat_ngram_size=1.5), "no_repeat_ngram_size"),
    (dict(min_new_tokens=9), "min_new_tokens 9 exceeds max_new_tokens 4"),
    (dict(min_new_tokens=-1), "min_new_tokens must be"),
    (dict(min_p=1.5), r"min_p must be a number in \[0, 1\]"),
    (dict(stop=[""]), "stop strings must not be empty"),
    (dict(stop=[3]), "stop must be a string or a list of strings"),
    (dict(pad_id=10 ** 6), "pad_id must be"),
    (dict(logprobs="yes"), "logprobs must be True or False"),
    (dict(top_kk=3), "unknown setting"),
    (dict(config={"top_k": 3}), "config must be a gpt_jax.GenerationConfig"),
])
def test_bad_settings_are_one_line_errors_before_compiling(kw, fragment, monkeypatch):
    monkeypatch.setattr(generation.DECODER, "run", lambda *a, **k: pytest.fail("compiled"))
    with pytest.raises(gpt_jax.UserError, match=fragment) as e:
        generation.generate(_params(), CFG, [[1, 2]], 4, **kw)
    assert "\n" not in str(e.value)


_P = []


def _params():
    if not _P:
        _P.append(random_params(CFG))
    return _P[0]
