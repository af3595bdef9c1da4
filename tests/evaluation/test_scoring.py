"""gpt_jax.loglikelihood and gpt_jax.token_logprobs against transformers' GPT2LMHeadModel on the
same fully random weights, request by request and token by token (tests/support/scoring_reference.py
computes one window at a time, with none of the batching, bucketing or gathering); and
gpt_jax.log_probs against a float64 log-softmax of the model's logits."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT

pytest.importorskip("torch", reason="the reference needs torch (pip install .[test])")
pytest.importorskip("transformers", reason="the reference needs transformers (pip install .[test])")

import gpt_jax
from gpt_jax import GPT, init_params, log_probs
import gpt_jax.evaluation.scoring as scoring
from gpt_jax.errors import TokenError, UserError
from gpt_jax.model.tokenizer import EOT_ID

from scoring_reference import (hf_logprobs, ref_loglikelihood, ref_token_logprobs,
                               reference_pair, top_two_gap)

BLOCK = 32
# vocab_size pads GPT-2's 50257 ids to 50304: the padded ids must carry no probability (the
# transformers model has only the 50257 real ones).
CFG = gpt_jax.GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=50304)
# Summed log-probs agree to ~1e-6 relative (float32 against float64 on the host); a scoring
# mistake (a position off by one, a missing token, padded ids in the softmax) moves them by ~1.
TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    return reference_pair(CFG)


def ids(rng, n):
    return rng.integers(0, 50257, n).tolist()


def greedy_continuation(hf, context, n):
    seq = list(context)
    for _ in range(n):
        token, gap = top_two_gap(hf_logprobs(hf, seq[-BLOCK:], [-1])[0])
        assert gap > 1e-3         # a clear argmax: no CPU's rounding can change it
        seq.append(token)
    return seq[len(context):]


def test_loglikelihood_matches_transformers(model):
    params, hf = model
    rng = np.random.default_rng(1)
    context = ids(rng, 6)
    greedy = greedy_continuation(hf, context, 5)
    almost = greedy[:3] + [(greedy[3] + 1) % 50257] + greedy[4:]
    requests = [
        ([], ids(rng, 3)),                       # empty context -> [<|endoftext|>]
        (ids(rng, 5), ids(rng, 1)),
        (ids(rng, 40), ids(rng, 10)),            # longer than the block: cut from the left
        (ids(rng, 10), ids(rng, BLOCK)),         # a continuation of exactly block_size
        (ids(rng, 1), ids(rng, 1)),
        (ids(rng, 20), ids(rng, 7)),
        (context, greedy),                       # every token the argmax
        (context, almost),                       # one token not
        (np.array(ids(rng, 4)), np.array(ids(rng, 2), np.int64)),   # numpy ids work too
    ]
    refs = [ref_loglikelihood(hf, BLOCK, list(c), list(t)) for c, t in requests]
    assert refs[6][1] and not refs[7][1]
    for batch_size in (None, 3):
        ours = gpt_jax.loglikelihood(params, CFG, requests, batch_size=batch_size)
        for i, ((lp, g), (ref_lp, ref_g)) in enumerate(zip(ours, refs)):
            assert abs(lp - ref_lp) <= TOL * (1 + abs(ref_lp)), (i, lp, ref_lp)
            assert g == ref_g, i
            assert isinstance(lp, float) and isinstance(g, bool)


@pytest.mark.parametrize("n,stride", [(90, BLOCK), (90, 12), (10, BLOCK)])
def test_token_logprobs_matches_transformers(model, n, stride):
    params, hf = model
    tokens = ids(np.random.default_rng(n + stride), n)
    ours = gpt_jax.token_logprobs(params, CFG, tokens, stride=stride)
    ref = ref_token_logprobs(hf, BLOCK, tokens, stride)
    assert ours.dtype == np.float32 and ours.shape == (n,)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL * (1 + np.abs(ref).max()))
    if stride == BLOCK:   # the default stride is block_size
        np.testing.assert_array_equal(gpt_jax.token_logprobs(params, CFG, tokens), ours)


def test_stride_one_is_the_full_context(model):
    """Independent of the window rule's wording: at stride 1 every token sees exactly the
    block_size tokens before it (fewer at the start)."""
    params, hf = model
    tokens = ids(np.random.default_rng(7), 50)
    seq = [EOT_ID] + tokens
    ref = [hf_logprobs(hf, seq[max(0, i + 1 - BLOCK):i + 1], [-1])[0, tokens[i]]
           for i in range(50)]
    np.testing.assert_allclose(gpt_jax.token_logprobs(params, CFG, tokens, stride=1), ref,
                               rtol=0, atol=TOL * 20)


def test_windows_score_every_token_once():
    for n in (1, 31, 32, 33, 64, 65, 100):
        for stride in (1, 5, 16, 31, 32):
            rows = scoring.window_rows(np.arange(n, dtype=np.int32), CFG, stride)
            assert len(rows) == scoring.n_windows(n, CFG, stride)
            targets = np.concatenate([r.targets for r in rows])
            np.testing.assert_array_equal(targets, np.arange(n))     # each token once, in order
            for r in rows:
                assert 1 <= len(r.inputs) <= BLOCK and len(r.inputs) - r.first == len(r.targets)
                # the window's start (inputs are [EOT, 0, 1, ...][start:]) and, for the token
                # each scored position p predicts (start + p), its context of p + 1 inputs:
                # at least block_size - stride + 1 tokens, or all of them
                start = 0 if r.inputs[0] == EOT_ID else int(r.inputs[0]) + 1
                for p in range(r.first, len(r.inputs)):
                    assert p + 1 >= min(BLOCK - stride + 1, start + p + 1)


def test_many_requests_do_not_retrace(model):
    params, _ = model
    rng = np.random.default_rng(3)
    scorer = scoring.get_scorer(CFG)

    def requests(k):   # inputs of 17..23 tokens (bucket 24), continuations of 5..6 (bucket 6)
        return [(ids(rng, int(rng.integers(13, 19))), ids(rng, int(rng.integers(5, 7))))
                for _ in range(k)]

    gpt_jax.loglikelihood(params, CFG, requests(8), batch_size=4)
    traces = scorer.traces
    gpt_jax.loglikelihood(params, CFG, requests(40), batch_size=4)
    gpt_jax.loglikelihood(params, CFG, requests(13), batch_size=4)   # a partial last batch
    assert scorer.traces == traces
    gpt_jax.loglikelihood(params, CFG, [(ids(rng, 2), ids(rng, 1))], batch_size=4)
    assert scorer.traces == traces + 1                               # a new shape traces once


def test_only_scored_positions_reach_the_head(model):
    params, _ = model
    B, T, S, V = 2, BLOCK, 4, CFG.vocab_size
    z = np.zeros((B, T), np.int32)
    text = scoring.get_scorer(CFG).lower(params, z, z[:, :S], z[:, :S]).as_text()
    assert f"{B}x{S}x{V}xf32" in text
    assert f"{B}x{T}x{V}xf32" not in text


def test_stacked_params_score_like_unstacked(model):
    """A run's scan_layers layout (layers stacked under "h") scores what GPT-2's layout does."""
    from gpt_jax.model.stacking import stack_layers
    params, _ = model
    rng = np.random.default_rng(4)
    reqs = [(ids(rng, 5), ids(rng, 3)), ([], ids(rng, 4)), (ids(rng, 40), ids(rng, 2))]
    plain = gpt_jax.loglikelihood(params, CFG, reqs)
    stacked = gpt_jax.loglikelihood(stack_layers(params, CFG.n_layer), CFG, reqs)
    for (a, g), (b, h) in zip(stacked, plain):
        assert abs(a - b) <= 1e-5 * (1 + abs(b)) and g == h, (a, b)


@pytest.mark.parametrize("requests,match", [
    ([([1, 2], list(range(BLOCK + 1)))], "request 0: the continuation has 33 tokens"),
    ([([1], [])], "request 0: the continuation is empty"),
    ([([1], [2]), ([-1], [2])], "token id -1 in request 1: the context is outside"),
    ([([1], [50304])], "token id 50304 in request 0: the continuation is outside"),
    ([([1.0, 2.0], [3])], "must be integer token ids, got float64"),
    ([([True], [3])], "must be integer token ids, got bool"),
    ([("hello", [3])], "not text: encode it first"),
    ([([[1, 2]], [3])], "flat list"),
    ([([1], [2], [3])], "request 0 must be a"),
    ("abc", "requests must be a list"),
])
def test_loglikelihood_bad_inputs(model, requests, match):
    with pytest.raises(UserError, match=match) as e:
        gpt_jax.loglikelihood(model[0], CFG, requests)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("stride", [0, BLOCK + 1, -3, 1.5, True, "8"])
def test_token_logprobs_bad_stride(model, stride):
    with pytest.raises(UserError, match=r"stride must be an integer in \[1, 32\]"):
        gpt_jax.token_logprobs(model[0], CFG, [1, 2, 3], stride=stride)


def test_token_logprobs_bad_tokens_and_edges(model):
    params, _ = model
    with pytest.raises(UserError, match="token id 60000"):
        gpt_jax.token_logprobs(params, CFG, [1, 60000])
    with pytest.raises(UserError, match="integer token ids"):
        gpt_jax.token_logprobs(params, CFG, [0.5])
    with pytest.raises(UserError, match="batch_size must be a positive integer"):
        gpt_jax.token_logprobs(params, CFG, [1, 2], batch_size=0)
    assert gpt_jax.token_logprobs(params, CFG, []).shape == (0,)
    small = gpt_jax.GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=64)
    small_params = None     # checked before any params are read
    with pytest.raises(UserError, match="needs <\\|endoftext\\|>"):
        gpt_jax.token_logprobs(small_params, small, [1, 2])
    with pytest.raises(UserError, match="an empty context needs"):
        gpt_jax.loglikelihood(small_params, small, [([], [1])])


def test_rows_are_split_over_a_mesh(tmp_path):
    """Params sharded over a 2-device fsdp mesh score like unsharded ones, the batch rows split
    over the devices (an odd batch_size is rounded up to whole rows per device)."""
    script = textwrap.dedent("""
        import sys, jax, numpy as np
        sys.path.insert(0, "tests/support")
        import gpt_jax
        import gpt_jax.evaluation.scoring as scoring
        import gpt_jax.model.sharding as sharding
        cfg = gpt_jax.GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=256)
        params = gpt_jax.init_params(cfg, jax.random.key(0))
        rng = np.random.default_rng(0)
        reqs = [(rng.integers(0, 256, 1 + i).tolist(), rng.integers(0, 256, 3).tolist())
                for i in range(7)]
        plain = gpt_jax.loglikelihood(params, cfg, reqs, batch_size=3)
        mesh = sharding.make_mesh("fsdp=2")
        sharded = jax.device_put(params, sharding.tree_shardings(params, mesh))
        seen = []
        real = scoring.Scorer.__call__
        def spy(self, params, tokens, at, targets):
            seen.append((tokens.shape, len(tokens.sharding.device_set),
                         tokens.sharding.shard_shape(tokens.shape)))
            return real(self, params, tokens, at, targets)
        scoring.Scorer.__call__ = spy
        ours = gpt_jax.loglikelihood(sharded, cfg, reqs, batch_size=3)
        assert all(s[0][0] == 4 and s[1] == 2 and s[2][0] == 2 for s in seen), seen
        for (a, g), (b, h) in zip(ours, plain):
            assert abs(a - b) <= 1e-5 * (1 + abs(b)) and g == h, (a, b)
        print("ok", len(seen))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok")


# -- log_probs: every position of equal-length rows ----------------------------------------------

def random_tokens(cfg, shape, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, cfg.n_real_vocab, jnp.int32)


def forward(cfg, params, tokens):
    return GPT(cfg).apply({"params": params}, tokens)


def test_log_probs_match_log_softmax(tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    tokens = random_tokens(tiny_cfg, (3, 12))
    lp = log_probs(params, tiny_cfg, tokens)
    assert lp.shape == (3, 11)
    logits = np.asarray(forward(tiny_cfg, params, tokens), np.float64)
    ref = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    t = np.asarray(tokens)
    expected = np.take_along_axis(ref[:, :-1], t[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(lp, expected, rtol=1e-5, atol=1e-5)
    mask = np.ones((3, 11), bool)
    mask[1, 4:] = False
    masked = np.asarray(log_probs(params, tiny_cfg, tokens, mask))
    assert np.all(masked[1, 4:] == 0)
    # the masked call is another compiled program: equal up to rounding, not bit for bit
    np.testing.assert_allclose(masked[1, :4], np.asarray(lp)[1, :4], rtol=1e-5)
    with pytest.raises(ValueError, match="mask"):
        log_probs(params, tiny_cfg, tokens, np.ones((3, 12), bool))


def test_log_probs_refuses_ids_outside_the_vocabulary_and_non_integer_ids(tiny_cfg):
    """An id past the vocabulary read NaN (60000) or a plausible number (-3, a wrapped gather);
    floats were truncated. Each is a one-line TokenError (a UserError and a ValueError)."""
    params = init_params(tiny_cfg, jax.random.key(0))
    V = tiny_cfg.vocab_size
    good = [[1, 2, 3]]
    assert np.isfinite(np.asarray(log_probs(params, tiny_cfg, good))).all()
    for bad, fragment in (([[1, V]], f"token id {V} "), ([[1, 60000]], "token id 60000"),
                          ([[1, -3]], "token id -3 "), (np.array([[1, 2]], np.uint64) + V,
                                                        f"token id {V + 2}"),
                          ([[1.0, 1.7]], "1.7"), ([[1.0, float("nan")]], "nan"),
                          ([[True, False]], "bool"), ("hello", "text"),
                          ([[1, 2], [3]], "integer token ids")):
        with pytest.raises(TokenError, match=fragment) as e:
            log_probs(params, tiny_cfg, bad)
        assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
        assert "\n" not in str(e.value)
    with pytest.raises(TokenError, match="2 <= T"):
        log_probs(params, tiny_cfg, [[1]])
    with pytest.raises(TokenError, match="block_size"):
        log_probs(params, tiny_cfg, np.ones((1, tiny_cfg.block_size + 2), int))
    assert log_probs(params, tiny_cfg, np.ones((1, tiny_cfg.block_size + 1), int)).shape == \
        (1, tiny_cfg.block_size)
    # Under a jax transformation the values cannot be read: no check, the same numbers.
    traced = jax.jit(lambda t: log_probs(params, tiny_cfg, t))(jnp.asarray(good))
    np.testing.assert_array_equal(traced, log_probs(params, tiny_cfg, good))


def same_answers(got, want):
    return [g for _, g in got] == [g for _, g in want] and \
        [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], rel=1e-5)


def _spy_batches(monkeypatch):
    """The (B, T, S) of each scoring call; a batch past 64 rows is stopped before it runs
    (it would allocate that many rows' logits)."""
    shapes = []
    real = scoring.Scorer.__call__

    def spy(self, params, tokens, at, targets):
        shapes.append((tokens.shape[0], tokens.shape[1], at.shape[1]))
        assert tokens.shape[0] <= 64, f"a batch of {tokens.shape[0]} rows reached the scorer"
        return real(self, params, tokens, at, targets)
    monkeypatch.setattr(scoring.Scorer, "__call__", spy)
    return shapes


def test_a_batch_size_past_the_work_is_cut_to_it(model, monkeypatch):
    """batch_size=10**6 for 3 requests allocated 10**6 rows (OOM-killed or RESOURCE_EXHAUSTED
    at 10**8); the batch is now the 3 rows there are, with the default batch's answers."""
    params, _ = model
    rng = np.random.default_rng(5)
    reqs = [(ids(rng, 5), ids(rng, 3)), (ids(rng, 9), ids(rng, 2)), ([], ids(rng, 4))]
    want = gpt_jax.loglikelihood(params, CFG, reqs)
    shapes = _spy_batches(monkeypatch)
    got = gpt_jax.loglikelihood(params, CFG, reqs, batch_size=10**6)
    assert [b for b, _, _ in shapes] == [3]
    assert same_answers(got, want)


def test_a_batch_that_cannot_fit_is_refused_or_shrunk_before_compiling(model, monkeypatch):
    """Memory is checked on the host first, as generate() does: a batch_size the caller gave
    that would not fit is one ScoreMemoryError line naming the largest that fits; the default
    batch shrinks to it instead."""
    from gpt_jax.errors import ScoreMemoryError
    params, _ = model
    rng = np.random.default_rng(6)
    reqs = [(ids(rng, 20), ids(rng, 4)) for _ in range(5)]   # T 24, S 4
    want = gpt_jax.loglikelihood(params, CFG, reqs, batch_size=2)
    per_row = scoring.score_memory_bytes(CFG, 1, 24, 4)
    monkeypatch.setattr(scoring, "MEMORY_CHECK_ABOVE", 0)
    monkeypatch.setattr(scoring, "available_memory_bytes", lambda: int(2.5 * per_row / 0.75))
    shapes = _spy_batches(monkeypatch)
    with pytest.raises(ScoreMemoryError, match=r"scoring 4 rows of 24 tokens .* pass "
                                               r"batch_size=2 or less") as e:
        gpt_jax.loglikelihood(params, CFG, reqs, batch_size=4)
    assert "\n" not in str(e.value) and isinstance(e.value, MemoryError) and shapes == []
    got = gpt_jax.loglikelihood(params, CFG, reqs)           # default: 2 rows a batch
    assert {b for b, _, _ in shapes} == {2}
    assert same_answers(got, want)
    monkeypatch.setattr(scoring, "available_memory_bytes", lambda: per_row // 2)
    with pytest.raises(ScoreMemoryError, match="use a smaller model"):
        gpt_jax.loglikelihood(params, CFG, reqs)
