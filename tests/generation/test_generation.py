"""gpt_jax.generation.decoding: batching, sampling end to end, EOS, seeds, compiled programs reused, the
decode-weights cache, and bad input as one-line UserErrors before anything is compiled."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_jax
import gpt_jax.generation as generation
import gpt_jax.generation.memory as memory
from gpt_jax.errors import DecodeMemoryError, PromptTooLongError
from gpt_jax.generation.decoding import generate
from gpt_jax.model.gpt import mask_vocab
from gpt_jax.generation.sampling import apply_temperature, sample_logits, top_k_filter

from generation_reference import (CFG, LENGTHS, N_NEW, chi2_pvalue, draws_of, prompts_of,
                                  random_params, tiny)


def test_batch_of_unequal_prompts_equals_each_alone():
    params = random_params(CFG, seed=3)
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=1)
    batch = np.asarray(generate(params, CFG, prompts, N_NEW, temperature=0))
    for b, p in enumerate(prompts):
        alone = generate(params, CFG, [p], N_NEW, temperature=0)[0]
        np.testing.assert_array_equal(batch[b], alone)
    # an int array (B, T) is the same as a list of equal-length lists
    arr = np.array(prompts_of([12] * 3, CFG.vocab_size, seed=2))
    np.testing.assert_array_equal(generate(params, CFG, arr, N_NEW, temperature=0),
                                  generate(params, CFG, arr.tolist(), N_NEW, temperature=0))

def test_top_k_1_and_tiny_top_p_are_greedy():
    params = random_params(CFG, seed=4)
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=4)
    greedy = np.asarray(generate(params, CFG, prompts, N_NEW, temperature=0))
    assert len(np.unique(greedy)) > 3
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        out = generate(params, CFG, prompts, N_NEW, temperature=1.0, key=jax.random.key(7),
                         **kw)
        np.testing.assert_array_equal(out, greedy, err_msg=str(kw))
    # the top-k filter itself, outside the greedy shortcut
    logits = jax.random.normal(jax.random.key(0), (64, 50))
    keys = jax.random.split(jax.random.key(1), 64)
    draws = jax.jit(jax.vmap(lambda l, k: sample_logits(l, k, top_k=1)))(logits, keys)
    np.testing.assert_array_equal(draws, logits.argmax(-1))


def test_top_k_only_samples_the_k_most_likely():
    params = random_params(CFG, seed=5, std=0.1)  # flat-ish distributions: many candidates
    k = 3
    new, logits = generate(params, CFG, prompts_of(LENGTHS, CFG.vocab_size), N_NEW, top_k=k,
                             temperature=2.0, key=jax.random.key(0), return_logits=True)
    topk = np.argsort(-np.asarray(logits), axis=-1)[..., :k]
    assert (np.asarray(new)[..., None] == topk).any(-1).all()
    assert (np.asarray(new)[..., None] == topk[..., 1:]).any()  # not just greedy

def test_padded_vocab_ids_are_never_sampled():
    # the pure filter: padded ids with by far the largest logits still never come out
    logits = jnp.zeros((10,)).at[7:].set(50.0)
    assert draws_of(logits, 2000, temperature=5.0)[7:].sum() > 0  # without the mask they win
    keys = jax.random.split(jax.random.key(0), 2000)
    draws = jax.vmap(lambda k: sample_logits(mask_vocab(logits, 7), k, temperature=5.0))(keys)
    assert int(draws.max()) < 7
    # end to end: GPT-2's 50257 ids padded to 50304 (tiny width keeps it cheap)
    cfg = gpt_jax.GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=32, vocab_size=50304)
    assert cfg.n_real_vocab == 50257
    params = random_params(cfg, std=0.5)
    params["wte"]["embedding"] = params["wte"]["embedding"].at[50257:].mul(100.0)
    new, logits = generate(params, cfg, [[50256]] * 4, 30, temperature=1e3,
                             key=jax.random.key(1), return_logits=True)
    assert int(np.asarray(new).max()) < 50257 and len(np.unique(new)) > 50
    assert np.all(np.asarray(logits)[..., 50257:] <= -1e8)


def test_eos_rows_stop_independently_and_pad_with_eos():
    params = random_params(CFG, seed=6, std=0.15)
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=6)
    key = jax.random.key(2)
    free = np.asarray(generate(params, CFG, prompts, N_NEW, key=key))
    eos = int(free[0, 4])
    out = np.asarray(generate(params, CFG, prompts, N_NEW, key=key, eos_id=eos))
    stops = []
    for row, ref in zip(out, free):
        hit = np.flatnonzero(ref == eos)
        stop = hit[0] if hit.size else len(ref)
        stops.append(stop)
        np.testing.assert_array_equal(row[:stop + 1], ref[:stop + 1])
        assert (row[stop:] == eos).all()
    assert len(set(stops)) > 1  # the rows finished at different steps


def test_seed_reproduces_and_different_seed_differs():
    params = random_params(CFG, seed=8, std=0.1)
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=8)
    a = generate(params, CFG, prompts, N_NEW, key=jax.random.key(0))
    b = generate(params, CFG, prompts, N_NEW, key=jax.random.key(0))
    c = generate(params, CFG, prompts, N_NEW, key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()


def test_same_static_shapes_do_not_retrace():
    params = random_params(CFG, seed=9)
    generate(params, CFG, prompts_of(LENGTHS, CFG.vocab_size), N_NEW, temperature=0.8)
    generate(params, CFG, prompts_of(LENGTHS, CFG.vocab_size), N_NEW, top_k=5)
    n = generation.DECODER.trace_count
    # other prompts in the same bucket (9..16 tokens), temperatures, seeds and eos ids
    for i in range(3):
        prompts = prompts_of([16 - i, 2 + i, 5], CFG.vocab_size, seed=i)
        generate(params, CFG, prompts, N_NEW, temperature=0.5 + i, key=jax.random.key(i),
                   eos_id=i)
        generate(params, CFG, prompts, N_NEW, top_k=2 + 10 * i)   # top_k is a runtime value
        generate(params, CFG, prompts, N_NEW, temperature=0.8, key=i)   # an int seed
    assert generation.DECODER.trace_count == n
    generate(params, CFG, prompts_of([17, 2, 5], CFG.vocab_size), N_NEW)  # next bucket
    assert generation.DECODER.trace_count == n + 1


def test_errors_are_user_errors(monkeypatch):
    params = random_params(CFG)
    with pytest.raises(PromptTooLongError) as e:
        generate(params, CFG, [[1] * 50], 15)
    msg = str(e.value)
    assert isinstance(e.value, gpt_jax.UserError) and "\n" not in msg
    assert "50" in msg and "15" in msg and "64" in msg
    monkeypatch.setattr(generation.DECODER, "run", lambda *a, **k: "decoded")  # no compile here
    assert generate(params, CFG, [[1] * 50], 14) == "decoded"  # exactly fits
    with pytest.raises(gpt_jax.UserError, match="outside the model's vocabulary"):
        generate(params, CFG, [[1, 128]], 4)
    for bad in (dict(temperature=-1), dict(top_k=0), dict(top_p=0), dict(top_p=1.5)):
        with pytest.raises(gpt_jax.UserError):
            generate(params, CFG, [[1]], 4, **bad)
    for prompts, n in (([[1]], 0), ([[]], 4), ([], 4)):
        with pytest.raises(gpt_jax.UserError):
            generate(params, CFG, prompts, n)


def test_decode_weights_are_made_once_per_params_and_dropped_with_them():
    """The decode loop's weights (transposed kernels on CPU) are reused for the same params,
    remade for new or mutable (numpy) params, freed when the params go, and never change what
    generate() returns."""
    import gc
    decoder = generation.DECODER
    params = random_params(CFG, seed=11)
    prompts = prompts_of(LENGTHS, CFG.vocab_size)
    transposed = jax.default_backend() == "cpu"
    first = decoder.weights(params, CFG)
    assert decoder.weights(params, CFG) is first
    expected = jax.tree_util.tree_map_with_path(
        lambda path, x: x.T if transposed and path[-1].key == "kernel" else x, params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, first, expected)
    assert first["wte"]["embedding"] is params["wte"]["embedding"]  # kept, not copied
    greedy = lambda p: np.asarray(generate(p, CFG, prompts, N_NEW, temperature=0))
    before = greedy(params)
    other = random_params(CFG, seed=12)
    assert decoder.weights(other, CFG) is not first
    assert (greedy(other) != before).any()  # the other params' weights, not stale ones
    np.testing.assert_array_equal(greedy(params), before)
    as_numpy = jax.tree_util.tree_map(np.asarray, params)
    assert decoder.weights(as_numpy, CFG) is not decoder.weights(as_numpy, CFG)  # no cache
    if transposed:
        decoder.weights(other, CFG)
        assert decoder.cached_weights is not None
        del other
        gc.collect()
        assert decoder.cached_weights is None


# -- bad input: one-line UserErrors, raised on the host before anything is compiled -----------

def no_decode(monkeypatch):
    """generate() up to the compiled call, which returns its arguments instead of running."""
    monkeypatch.setattr(generation.DECODER, "run", lambda *a, **k: (a, k))


def test_prompt_longer_than_block_size_is_prompt_too_long_not_a_numpy_error():
    """The length check comes before padding: a prompt longer than the bucket raised numpy's
    "could not broadcast input array" from the padding loop."""
    params = random_params(CFG)
    for prompts, n in (([[1] * 100], 4), ([[1] * 70, [2]], 1), ([[1] * 64], 1),
                       (np.ones((2, 65), np.int32), 1)):
        with pytest.raises(PromptTooLongError, match="exceeds the model's block_size 64"):
            generate(params, CFG, prompts, n)
    with pytest.raises(PromptTooLongError, match="ask for at most 63 tokens"):
        generate(params, CFG, [[1]], 64)
    with pytest.raises(PromptTooLongError, match="no room for a prompt"):
        generate(params, CFG, [[1]], 10 ** 20)
    with pytest.raises(PromptTooLongError):
        generation.left_pad([[1] * 65], CFG)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(prompts=[1, 2, 3]), r"flat list of token ids: pass a list of prompts, e\.g\. \[\[1, 2, 3\]\]"),
    (dict(prompts=np.array([1, 2, 3])), r"ids\[None\]"),
    (dict(prompts=[[1.7, 2]]), r"float64 values such as 1\.7"),
    (dict(prompts=[[1.0, 2.0]]), "float64"),                  # whole floats are refused too
    (dict(prompts=np.array([[1.0, 2.0]], np.float32)), "float32"),
    (dict(prompts=[[float("nan")]]), "such as nan"),
    (dict(prompts=[[2 ** 70]]), str(2 ** 70)),
    (dict(prompts=[[True, False]]), "bool"),
    (dict(prompts=["hello"]), "text: encode it first"),
    (dict(prompts="hello"), "not text: encode it first"),
    (dict(prompts=[[[1, 2]]]), r"prompt 0 must be a flat list of token ids, got shape \(1, 2\)"),
    (dict(prompts=[[1], [2, "x"]]), "prompt 1 must be integer token ids"),
    (dict(prompts=None), "got NoneType"),
    (dict(prompts=[[1, -1]]), "token id -1 in prompt 0 is outside the model's vocabulary"),
    (dict(prompts=np.array([[1, 200]], np.uint8)), "token id 200 in prompts is outside"),
    (dict(eos_id=10 ** 12), r"eos_id must be None or a token id the model can emit"),
    (dict(eos_id=-1), "eos_id"),
    (dict(eos_id=1.5), "eos_id"),
    (dict(eos_id=CFG.vocab_size), "eos_id"),
    (dict(key=2 ** 32), r"int key is a seed in \[0, 2\*\*32\)"),
    (dict(key=-1), "seed"),
    (dict(key="seed"), "key must be one jax PRNG key"),
    (dict(key=1.5), "key must be one jax PRNG key"),
    (dict(key=jax.random.split(jax.random.key(0), 2)), r"one jax PRNG key .*shape \(2,\)"),
    (dict(temperature="0.5"), "temperature must be a number"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=True), "temperature"),
    (dict(top_k="5"), "top_k must be a positive integer"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_k=5.0), "top_k"),
    (dict(top_k=True), "top_k"),
    (dict(top_p="0.5"), r"top_p must be a number in \(0, 1\]"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(max_new_tokens=4.0), "max_new_tokens must be a positive integer"),
    (dict(max_new_tokens="4"), "max_new_tokens"),
    (dict(return_logits="no"), "return_logits must be True or False"),
    (dict(params=None), "params must be the parameter dict"),
    (dict(cfg={"n_layer": 2}), "cfg must be a gpt_jax.GPTConfig"),
    (dict(cfg=tiny(n_layer=3)), "params have 2 layers, cfg.n_layer is 3"),
    (dict(cfg=tiny(n_embd=64)), "params are 32 wide, cfg.n_embd is 64"),
])
def test_bad_generate_input_is_one_user_error_line(kwargs, fragment, monkeypatch):
    no_decode(monkeypatch)
    call = dict(params=_PARAMS(), cfg=CFG, prompts=[[1, 2]], max_new_tokens=4)
    call.update(kwargs)
    params, cfg, prompts, n = (call.pop(k) for k in ("params", "cfg", "prompts",
                                                      "max_new_tokens"))
    with pytest.raises(gpt_jax.UserError, match=fragment) as e:
        generate(params, cfg, prompts, n, **call)
    assert "\n" not in str(e.value)


@functools.lru_cache(maxsize=1)
def _PARAMS():
    return random_params(CFG, seed=21)


def test_accepted_forms_of_prompts_keys_and_numbers(monkeypatch):
    """What generate() takes: rows as lists, tuples, numpy or jax arrays of any int dtype;
    an int seed for key (the same as jax.random.key(seed)) or a legacy uint32 key; numpy
    scalars for the numbers. All of them reach the same compiled call."""
    params = _PARAMS()
    ref, _ = generation.generate_args(params, CFG, [[1, 2], [3]], 4, key=jax.random.key(42),
                                      temperature=0.5, top_k=3, top_p=0.9, eos_id=5)
    for prompts in ([(1, 2), (3,)], ([np.int64(1), 2], [np.uint8(3)]),
                    [np.array([1, 2], np.uint16), jnp.array([3])]):
        args, _ = generation.generate_args(params, CFG, prompts, 4, key=42,
                                           temperature=np.float32(0.5), top_k=np.int64(3),
                                           top_p=np.float64(0.9), eos_id=np.int32(5))
        for a, b in zip(args[2:], ref[2:]):
            if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
                a, b = jax.random.key_data(a), jax.random.key_data(b)
            np.testing.assert_array_equal(a, b)
    params_out = generate(params, CFG, [[1, 2]], 4, key=7)
    np.testing.assert_array_equal(params_out,
                                  generate(params, CFG, [[1, 2]], 4, key=jax.random.key(7)))
    generate(params, CFG, [[1, 2]], 4, key=jax.random.PRNGKey(7))   # legacy raw key
    generate(params, CFG, jnp.array([[1, 2]]), 4, temperature=jnp.float32(0.5))


def test_absurd_batch_is_refused_up_front_with_the_estimate(monkeypatch):
    """sample.py --num_samples 100000000 grew to 22 GB and was killed. generate() estimates the
    KV cache and logits first and refuses what would not fit, before reading the prompts (a
    billion-row view costs nothing here; reading it would take minutes)."""
    params = _PARAMS()
    no_decode(monkeypatch)
    huge = np.broadcast_to(np.ones((1, 4), np.int32), (10 ** 9, 4))   # no memory behind it
    with pytest.raises(DecodeMemoryError) as e:
        generate(params, CFG, huge, 8)
    msg = str(e.value)
    assert isinstance(e.value, gpt_jax.UserError) and "\n" not in msg
    need = memory.decode_memory_bytes(CFG, 10 ** 9, 8, 8)
    assert f"{need / 2**30:,.1f} GiB" in msg and "available" in msg
    assert "split the prompts into calls of at most" in msg
    with pytest.raises(DecodeMemoryError):
        generate(params, CFG, [[1]] * 10 ** 6, 8, return_logits=True)  # 10**6 x 8 x 128 logits

    # With a known budget: the largest batch that fits passes, one more row is refused, and
    # the message names that largest batch.
    monkeypatch.setattr(memory, "MEMORY_CHECK_ABOVE", 0)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 64 << 20)
    per_row = memory.decode_memory_bytes(CFG, 1, 8, 8)
    fit = int(memory.MEMORY_FRACTION * (64 << 20)) // per_row
    assert memory.max_batch(CFG, 8, 8) == fit > 10
    generate(params, CFG, [[1]] * fit, 8)
    with pytest.raises(DecodeMemoryError, match=f"calls of at most {fit}$"):
        generate(params, CFG, [[1]] * (fit + 1), 8)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1000)
    with pytest.raises(DecodeMemoryError, match="ask for fewer tokens"):
        generate(params, CFG, [[1]], 8)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: None)  # unknown: no refusal
    generate(params, CFG, [[1]] * (fit + 1), 8)


def test_decode_memory_estimate_covers_the_kv_cache_and_logits():
    """The estimate grows with what the decode holds: twice the KV cache (the prefill's padded
    cache and the loop's carry), the per-step logits, and the returned logits when asked."""
    cfg = gpt_jax.GPTConfig.from_preset("gpt2")
    B, P, N = 8, 32, 128
    est = memory.decode_memory_bytes(cfg, B, P, N)
    kv = 2 * cfg.n_layer * B * (P + N - 1) * cfg.n_embd * 4
    assert 2 * kv < est < 2 * kv + 200 * B * cfg.vocab_size * 4
    with_logits = memory.decode_memory_bytes(cfg, B, P, N, return_logits=True)
    assert with_logits - est == 2 * B * N * cfg.vocab_size * 4
    assert memory.decode_memory_bytes(cfg, 2 * B, P, N) == 2 * est
    assert memory.decode_memory_bytes(cfg.replace(dtype="bfloat16"), B, P, N) < est
    assert memory.available_memory_bytes() > 0


def test_tiny_temperature_is_greedy_not_an_overflow():
    """--temperature 1e-45 printed "jjjj...": logits / 1e-45 overflowed to +-inf and the first
    +inf won. The maximum is moved to 0 before dividing, so tiny temperatures tend to greedy;
    one that float32 rounds to 0 acts as the smallest normal float32."""
    params = random_params(CFG, seed=4)
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=4)
    greedy = np.asarray(generate(params, CFG, prompts, N_NEW, temperature=0))
    assert len(np.unique(greedy)) > 3
    for t in (1e-45, 1e-38, 1e-30, 1e-8, 1e-300):
        out = generate(params, CFG, prompts, N_NEW, temperature=t, key=jax.random.key(3))
        np.testing.assert_array_equal(out, greedy, err_msg=f"temperature {t}")
    # top_p that float32 rounds to 0 keeps the most likely token, not nothing
    out = generate(params, CFG, prompts, N_NEW, top_p=1e-50, key=jax.random.key(3))
    np.testing.assert_array_equal(out, greedy)
    logits = jnp.array([[1e30, -1e30, 3.0, 3.0], [-jnp.inf, 2.0, 1.0, -jnp.inf]])
    for t in (1e-38, 1e-45, 0.0):   # subnormal, and 0 (which generate() turns into greedy)
        scaled = np.asarray(apply_temperature(logits, jnp.float32(t)))
        assert np.all(scaled <= 0) and not np.isnan(scaled).any()
        assert scaled[0, 0] == 0 and scaled[1, 1] == 0 and scaled[1, 0] == -np.inf


def test_infinite_temperature_is_uniform_over_the_top_k_survivors():
    """temperature=inf made every logit equal, so top-k (which ran after it) kept everything.
    top-k now runs first: inf is uniform sampling among the k most likely tokens (all real ids
    without top_k, never a padded one); top_p then keeps all k, as they are equally likely."""
    logits = jnp.asarray(np.array(jax.random.normal(jax.random.key(5), (30,))) * 3)
    order = np.argsort(-np.asarray(logits))
    k, n = 5, 20_000
    for kw in (dict(top_k=k), dict(top_k=k, top_p=0.3)):
        counts = draws_of(logits, n, temperature=float("inf"), **kw)
        probs = np.zeros(30)
        probs[order[:k]] = 1 / k
        assert chi2_pvalue(counts, probs) > 1e-4, kw
    counts = draws_of(mask_vocab(logits, 25), n, temperature=float("inf"))
    assert chi2_pvalue(counts, np.r_[np.full(25, 1 / 25), np.zeros(5)]) > 1e-4
    # A huge finite temperature is the same limit.
    counts = draws_of(logits, n, temperature=1e30, top_k=k)
    assert counts[order[k:]].sum() == 0 and chi2_pvalue(counts, probs) > 1e-4
    # End to end: only the top-k of each step's logits come out, and more than the top one.
    params = random_params(CFG, seed=5)
    new, lg = generate(params, CFG, prompts_of(LENGTHS, CFG.vocab_size), N_NEW, top_k=3,
                         temperature=float("inf"), key=jax.random.key(0), return_logits=True)
    top3 = np.argsort(-np.asarray(lg), axis=-1)[..., :3]
    assert (np.asarray(new)[..., None] == top3).any(-1).all()
    assert (np.asarray(new) != top3[..., 0]).mean() > 0.4   # ~2/3 are not the argmax


def test_top_k_below_one_keeps_the_top_token_and_generate_refuses_tracing():
    """top_k_filter's k may be traced (it cannot be refused there): k < 1 acts as 1 instead of
    leaving nothing to sample (the draw then read garbage: id 0)."""
    logits = jax.random.normal(jax.random.key(0), (4, 50)) + 1
    for k in (0, -3):
        kept = np.asarray(jax.jit(top_k_filter)(logits, jnp.int32(k)))
        np.testing.assert_array_equal(np.isfinite(kept), np.isfinite(top_k_filter(logits, 1)))
    with pytest.raises(gpt_jax.UserError, match="outside jax.jit"):
        jax.jit(lambda p: generate(_PARAMS(), CFG, p, 4))(jnp.ones((1, 3), jnp.int32))
