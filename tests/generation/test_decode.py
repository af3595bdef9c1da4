"""gpt_jax.generation.step through generate(): the cached one-token step reproduces GPT's full forward
pass (float32 and bfloat16), and the no-cache reference decoder agrees."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_jax.generation as generation
from gpt_jax.generation.decoding import generate, generate_args
from gpt_jax.generation.loop import (DECODER, FIRST, SEGMENTS, STRIDE, Programs,
                                     segment_lengths)
from gpt_jax.generation.step import decode_weights, quantize_int8, weight_bytes
from gpt_jax.errors import UserError

from generation_reference import (CFG, LENGTHS, N_NEW, full_forward_logits, prompts_of,
                                  random_params, tiny)


@pytest.mark.parametrize("cfg_kw,lengths,n_new", [
    (dict(n_layer=1, n_head=1, n_embd=16), [5], 9),
    (dict(), LENGTHS, N_NEW),
    (dict(n_head=4, bias=False), [16, 3], 8),
])
def test_cached_logits_equal_full_forward(cfg_kw, lengths, n_new):
    cfg = tiny(**cfg_kw)
    params = random_params(cfg)
    prompts = prompts_of(lengths, cfg.vocab_size)
    new, logits = generate(params, cfg, prompts, n_new, temperature=0, return_logits=True)
    new, logits = np.asarray(new), np.asarray(logits)
    assert new.shape == (len(lengths), n_new) and new.dtype == np.int32
    ref = full_forward_logits(params, cfg, prompts, new)
    assert np.abs(logits - ref).max() <= 1e-5 * np.abs(ref).max()
    np.testing.assert_array_equal(new, ref.argmax(-1))  # greedy tokens identical
    if cfg == CFG:  # the jitted no-cache reference decoder (bench.py's baseline) agrees too
        tokens, pad = generation.left_pad(prompts, cfg)
        np.testing.assert_array_equal(
            new, generation.generate_uncached(params, tokens, pad, cfg=cfg, max_new_tokens=n_new))


def test_bfloat16_decode_streams_bfloat16_weights_and_tracks_the_forward():
    """With a bfloat16 compute dtype the loop reads weights cast once to bfloat16 (half the
    bytes) and its logits follow a bfloat16 full forward pass within bfloat16 rounding."""
    cfg = tiny(dtype="bfloat16")
    params = random_params(cfg, seed=5)
    layout = decode_weights(params, cfg)
    assert layout["h_0"]["mlp"]["c_fc"]["kernel"].dtype == jnp.bfloat16
    assert layout["wte"]["embedding"].dtype == jnp.bfloat16
    assert layout["h_0"]["ln_1"]["scale"].dtype == jnp.float32   # LayerNorm runs in float32
    prompts = prompts_of(LENGTHS, cfg.vocab_size)
    new, logits = generate(params, cfg, prompts, N_NEW, temperature=0, return_logits=True)
    ref = full_forward_logits(params, cfg, prompts, np.asarray(new))
    err = np.abs(np.asarray(logits) - ref).max() / np.abs(ref).max()
    assert err < 0.03, err
    f32 = full_forward_logits(params, CFG, prompts, np.asarray(new))
    assert np.abs(ref - f32).max() / np.abs(f32).max() > 1e-4  # bfloat16 really ran


def dequantized(params, fmt):
    """params as the decode loop's compressed weights hold them: the Dense kernels and wte
    rounded to bfloat16, or to int8 times a float32 scale per output channel."""
    def rounded(path, x):
        name = path[-1].key
        if name not in ("kernel", "embedding") or path[0].key == "wpe":
            return x
        if fmt == "bfloat16":
            return x.astype(jnp.bfloat16).astype(jnp.float32)
        axis = 0 if name == "kernel" else 1   # the input axis: (in, out) kernels, (V, C) wte
        q, scale = quantize_int8(x, axis=axis)
        return q.astype(jnp.float32) * jnp.expand_dims(scale, axis)
    return jax.tree_util.tree_map_with_path(rounded, params)


def test_quantize_int8_rounds_each_output_channel_to_its_own_scale():
    w = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    w[:, 2] *= 100                            # one loud channel must not coarsen the others
    w[:, 4] = 0                               # an all-zero channel
    q, scale = map(np.asarray, quantize_int8(w, axis=0))
    assert q.dtype == np.int8 and scale.shape == (5,)
    np.testing.assert_array_equal(np.abs(q).max(0), [127, 127, 127, 127, 0])
    assert np.all(np.abs(q * scale - w) <= scale / 2 * (1 + 1e-6))
    np.testing.assert_allclose(scale[:4], np.abs(w).max(0)[:4] / 127, rtol=1e-6)


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
def test_compressed_weights_are_stored_narrow(fmt):
    cfg = CFG
    params = random_params(cfg)
    full, narrow = decode_weights(params, cfg), decode_weights(params, cfg, fmt)
    assert narrow["h_0"]["mlp"]["c_fc"]["kernel"].dtype == jnp.dtype(fmt)
    assert narrow["wte"]["embedding"].dtype == jnp.dtype(fmt)
    assert narrow["h_0"]["mlp"]["c_fc"]["bias"].dtype == jnp.float32
    ratio = weight_bytes(narrow) / weight_bytes(full)
    assert ratio < (0.3 if fmt == "int8" else 0.55), ratio


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
@pytest.mark.parametrize("lengths", [[7], LENGTHS])  # one row: fused widening; more: widened
def test_compressed_decode_computes_with_exactly_the_rounded_weights(fmt, lengths):
    """The logits (the prefill's and the loop's) are those of a float32 forward pass over the
    rounded weights, to float32 rounding, and differ from the unrounded model's by the
    weights' rounding only."""
    params = random_params(CFG, seed=3)
    prompts = prompts_of(lengths, CFG.vocab_size)
    new, logits = generate(params, CFG, prompts, N_NEW, temperature=0, return_logits=True,
                           weights=fmt)
    new, logits = np.asarray(new), np.asarray(logits)
    ref = full_forward_logits(dequantized(params, fmt), CFG, prompts, new)
    f32 = full_forward_logits(params, CFG, prompts, new)
    scale = np.abs(f32).max()
    assert np.abs(logits - ref).max() <= 1e-5 * scale
    err = np.abs(logits - f32).max() / scale
    # Measured: int8 up to 0.055 of the largest logit on these noisy weights, bfloat16 < 0.01.
    assert 1e-4 < err < (0.1 if fmt == "int8" else 0.02), err   # rounded, but not far off


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
def test_compressed_greedy_tokens_agree_where_float32_has_a_clear_winner(fmt):
    """Greedy decoding with compressed weights picks float32's token at every step where
    float32's top two logits are further apart than twice the logits' error (so rounding
    cannot swap them), up to the first step where the two runs' tokens differ."""
    params = random_params(CFG, seed=4)
    prompts = prompts_of([5] * 8, CFG.vocab_size, seed=1)
    n = 24
    ref, ref_logits = map(np.asarray, generate(params, CFG, prompts, n, temperature=0,
                                               return_logits=True))
    new, logits = map(np.asarray, generate(params, CFG, prompts, n, temperature=0,
                                           return_logits=True, weights=fmt))
    top2 = np.sort(ref_logits, axis=-1)[..., -2:]
    margin = top2[..., 1] - top2[..., 0]                                     # (B, N)
    checked = 0
    for b in range(len(prompts)):
        first = int(np.argmax(new[b] != ref[b])) if (new[b] != ref[b]).any() else n
        for i in range(min(first + 1, n)):     # the same prefix: the same inputs to step i
            err = np.abs(logits[b, i] - ref_logits[b, i]).max()
            if margin[b, i] > 2 * err:
                assert new[b, i] == ref[b, i], (b, i)
                checked += 1
        assert first == n or margin[b, first] <= 2 * np.abs(logits[b, first] -
                                                               ref_logits[b, first]).max()
    assert checked >= 0.8 * len(prompts) * n * (0.5 if fmt == "int8" else 1), checked
    assert (new == ref).mean() >= 0.5


@pytest.mark.parametrize("bad", ["int4", "float16", 8, "INT8"])
def test_bad_decode_weights_are_a_user_error(bad):
    with pytest.raises(UserError, match="weights must be"):
        generate(random_params(CFG), CFG, [[1, 2]], 2, temperature=0, weights=bad)


# -- the cache grown in segments (loop.segment_lengths) ----------------------------------------

def test_segment_lengths_start_after_the_prompt_and_end_at_the_whole_cache():
    assert segment_lengths(32, 543, 4) == (48, 213, 378, 543)
    assert segment_lengths(512, 1023, 4) == (528, 693, 858, 1023)
    assert segment_lengths(16, 16 + STRIDE, 4) == (16 + STRIDE,)   # short: one cache
    assert segment_lengths(16, 300, 1) == (300,)                    # 1: the whole cache
    assert segment_lengths(16, 16 + STRIDE + 1, 8) == (16 + FIRST, 16 + STRIDE + 1)
    for P, S, n in [(1, 200, 4), (16, 16 + STRIDE + 1, 8), (7, 900, 16), (64, 200, 3)]:
        lengths = segment_lengths(P, S, n)
        assert lengths[0] == P + FIRST and lengths[-1] == S and len(lengths) <= n
        assert all(b - a >= 1 for a, b in zip(lengths, lengths[1:]))


SEG_CFG = tiny(block_size=256)


@pytest.mark.parametrize("settings", [
    dict(temperature=0, return_logits=True),                       # lax.scan through 4 caches
    dict(temperature=0, eos_id=3, return_logits=True, logprobs=True),  # while_loop
    dict(temperature=1.0, top_k=20),                               # sampled: the same keys
])
def test_a_cache_grown_in_segments_decodes_what_the_whole_cache_does(settings):
    """Rows of unequal lengths decode 150 tokens through caches of 3 lengths; the tokens equal
    those of one whole cache from the start (cache_segments=1) and the logits equal GPT's full
    forward pass over the generated sequence."""
    params = random_params(SEG_CFG)
    prompts = prompts_of([5, 13], SEG_CFG.vocab_size)
    args, static = generate_args(params, SEG_CFG, prompts, 150, key=7, **settings)
    assert len(segment_lengths(16, 16 + 149, SEGMENTS)) == SEGMENTS
    grown, whole = (DECODER.run(*args, **static, cache_segments=n) for n in (0, 1))
    grown, whole = (x if isinstance(x, tuple) else (x,) for x in (grown, whole))
    np.testing.assert_array_equal(grown[0], whole[0])
    for a, b in zip(grown[1:], whole[1:]):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if settings.get("return_logits"):
        new, logits = np.asarray(grown[0]), np.asarray(grown[1])
        ends = [int(np.argmax(row == 3)) + 1 for row in new if (row == 3).any()]
        if "eos_id" in settings and ends:    # compare up to the first row's eos
            new, logits = new[:, :min(ends)], logits[:, :min(ends)]
        ref = full_forward_logits(params, SEG_CFG, prompts, new)
        assert np.abs(logits - ref).max() <= 1e-5 * np.abs(ref).max()


def test_an_early_exit_in_the_first_segment_returns_the_free_tokens_and_streams_them():
    """Every row stops within the first cache (eos is the 6th free token of each row), so the
    loop's later segments are skipped; the tokens are the free run's up to eos."""
    params = random_params(SEG_CFG)
    prompts = prompts_of([4], SEG_CFG.vocab_size, seed=1) * 2
    free = np.asarray(generate(params, SEG_CFG, prompts, 150, temperature=0))
    eos = int(free[0, 5])
    n = int(np.argmax(free[0] == eos)) + 1
    out = np.asarray(generate(params, SEG_CFG, prompts, 150, temperature=0, eos_id=eos))
    np.testing.assert_array_equal(out[:, :n], free[:, :n])
    assert (out[:, n:] == eos).all()            # pad_id defaults to eos_id
    stream = np.stack([p.tokens for p in generation.generate_stream(
        params, SEG_CFG, prompts, 150, temperature=0, eos_id=eos)], axis=1)
    np.testing.assert_array_equal(stream, out[:, :stream.shape[1]])
    assert stream.shape[1] == n < FIRST


def test_a_while_loop_decode_runs_its_later_segments_only_when_a_row_still_decodes():
    """A while_loop decode is two programs (Decoder.run, loop.Programs): the start (prefill,
    first cache segment), then the rest only while a row decodes. Both exits give generate()'s
    tokens; the start's temporary buffer is far smaller than the one program's, which holds
    every segment's cache (faulted in anew each call on CPU: why it is split)."""
    params = random_params(SEG_CFG)
    prompts = prompts_of([4], SEG_CFG.vocab_size, seed=1) * 2
    free = np.asarray(generate(params, SEG_CFG, prompts, 150, temperature=0))
    never = min(set(range(SEG_CFG.n_real_vocab)) - set(free.ravel().tolist()))
    for eos, runs_rest in ((int(free[0, 5]), False), (never, True)):
        args, static = generate_args(params, SEG_CFG, prompts, 150, temperature=0, eos_id=eos)
        fn = DECODER.compile(*args, **static)
        assert isinstance(fn, Programs) and fn.rest is not None
        calls, rest = [], fn.rest
        fn.rest = lambda *a: calls.append(1) or rest(*a)
        out = np.asarray(fn(*args))
        assert calls == ([1] if runs_rest else [])
        np.testing.assert_array_equal(out, generate(params, SEG_CFG, prompts, 150,
                                                    temperature=0, eos_id=eos))
        if runs_rest:
            np.testing.assert_array_equal(out, free)
    one = DECODER.lower(*args, **static, part="whole").compile()
    temp = lambda c: c.memory_analysis().temp_size_in_bytes
    assert temp(fn) * 2 < temp(one), (temp(fn), temp(one))
