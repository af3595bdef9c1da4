"""gpt_jax.generate: cached decoding == full forward passes, batching, sampling filters, EOS."""
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import gpt_jax
from gpt_jax.model import GPT

G = importlib.import_module("gpt_jax.generate")  # the module (gpt_jax.generate is the function)


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


@pytest.mark.parametrize("cfg_kw,lengths,n_new", [
    (dict(n_layer=1, n_head=1, n_embd=16), [5], 9),
    (dict(), LENGTHS, N_NEW),
    (dict(n_head=4, bias=False), [16, 3], 8),
])
def test_cached_logits_equal_full_forward(cfg_kw, lengths, n_new):
    cfg = tiny(**cfg_kw)
    params = random_params(cfg)
    prompts = prompts_of(lengths, cfg.vocab_size)
    new, logits = G.generate(params, cfg, prompts, n_new, temperature=0, return_logits=True)
    new, logits = np.asarray(new), np.asarray(logits)
    assert new.shape == (len(lengths), n_new) and new.dtype == np.int32
    ref = full_forward_logits(params, cfg, prompts, new)
    assert np.abs(logits - ref).max() <= 1e-5 * np.abs(ref).max()
    np.testing.assert_array_equal(new, ref.argmax(-1))  # greedy tokens identical
    if cfg == CFG:  # the jitted no-cache reference decoder (bench.py's baseline) agrees too
        tokens, pad = G.left_pad(prompts, cfg)
        np.testing.assert_array_equal(
            new, G.generate_uncached(params, tokens, pad, cfg=cfg, max_new_tokens=n_new))


def test_bfloat16_decode_streams_bfloat16_weights_and_tracks_the_forward():
    """With a bfloat16 compute dtype the loop reads weights cast once to bfloat16 (half the
    bytes) and its logits follow a bfloat16 full forward pass within bfloat16 rounding."""
    cfg = tiny(dtype="bfloat16")
    params = random_params(cfg, seed=5)
    layout = G.decode_layout(params, cfg)
    assert layout["h_0"]["mlp"]["c_fc"]["kernel"].dtype == jnp.bfloat16
    assert layout["wte"]["embedding"].dtype == jnp.bfloat16
    assert layout["h_0"]["ln_1"]["scale"].dtype == jnp.float32   # LayerNorm runs in float32
    prompts = prompts_of(LENGTHS, cfg.vocab_size)
    new, logits = G.generate(params, cfg, prompts, N_NEW, temperature=0, return_logits=True)
    ref = full_forward_logits(params, cfg, prompts, np.asarray(new))
    err = np.abs(np.asarray(logits) - ref).max() / np.abs(ref).max()
    assert err < 0.03, err
    f32 = full_forward_logits(params, CFG, prompts, np.asarray(new))
    assert np.abs(ref - f32).max() / np.abs(f32).max() > 1e-4  # bfloat16 really ran


def test_batch_of_unequal_prompts_equals_each_alone():
    params = random_params(CFG, seed=3)
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=1)
    batch = np.asarray(G.generate(params, CFG, prompts, N_NEW, temperature=0))
    for b, p in enumerate(prompts):
        alone = G.generate(params, CFG, [p], N_NEW, temperature=0)[0]
        np.testing.assert_array_equal(batch[b], alone)
    # an int array (B, T) is the same as a list of equal-length lists
    arr = np.array(prompts_of([12] * 3, CFG.vocab_size, seed=2))
    np.testing.assert_array_equal(G.generate(params, CFG, arr, N_NEW, temperature=0),
                                  G.generate(params, CFG, arr.tolist(), N_NEW, temperature=0))


def test_first_argmax_equals_numpy_argmax_with_ties():
    rng = np.random.default_rng(0)
    for shape in ((7,), (3, 50257), (2, 4, 33)):
        x = rng.integers(-3, 4, shape).astype(np.float32)   # many ties: the first index wins
        x.flat[rng.integers(0, x.size, 5)] = -np.inf
        got = np.asarray(jax.jit(G.first_argmax)(x))
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, np.argmax(x, axis=-1))


def test_top_k_and_top_p_filters_equal_sorted_references_with_ties():
    """The bisection filters keep exactly what a sort would: the k largest (ties with the k-th
    all kept) and the nucleus (tokens strictly more likely than it hold < p; ties kept)."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 5000)) * 3).astype(np.float32)
    x[:, :300] = np.round(x[:, :300])                   # tied groups
    x[:, -40:] = -np.inf                                # masked ids
    x[1, :-40] = -x[1, :-40]                            # all signs of the float ordering
    top_k = jax.jit(G.top_k_filter, static_argnums=1)
    top_p = jax.jit(G.top_p_filter)
    for row in x:
        desc = np.sort(row)[::-1]
        for k in (1, 2, 7, 299, 4960, 5000):
            want = np.where(row >= desc[k - 1], row, -np.inf)
            np.testing.assert_array_equal(top_k(row, k), want, err_msg=f"k={k}")
        probs = np.exp(row.astype(np.float64) - row.max())
        probs /= probs.sum()
        above = np.array([probs[row > v].sum() for v in row])   # mass strictly more likely
        for p in (1e-6, 0.3, 0.9, 0.99):
            keep = above < p
            # The filter's float32 masses (softmax, then sums of up to 5000 terms) are off by
            # ~2e-7 of the mass here, more under another reduction order, and near p = 0.99
            # the tokens lie ~1e-6 apart in mass: one within 1e-5 of p may fall either way.
            sure = np.abs(above - p) > 1e-5 * max(p, 1e-3)
            got = np.asarray(top_p(row, p))
            np.testing.assert_array_equal(got[sure], np.where(keep, row, -np.inf)[sure],
                                          err_msg=f"p={p}")
            assert sure.sum() >= row.size - 3, f"p={p}: too many tokens near the boundary"
            kept, dropped = row[np.isfinite(got)], row[np.isfinite(row) & ~np.isfinite(got)]
            assert kept.size and (dropped.size == 0 or kept.min() > dropped.max())  # threshold


def test_sampling_draws_what_jax_random_categorical_draws():
    logits = jax.random.normal(jax.random.key(0), (4, 300)) * 2
    draw = jax.jit(lambda k: G.sample_logits(logits, k, temperature=0.7))
    for i in range(10):
        key = jax.random.key(i)
        np.testing.assert_array_equal(draw(key), jax.random.categorical(key, logits / 0.7))


def test_top_k_1_and_tiny_top_p_are_greedy():
    params = random_params(CFG, seed=4)
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=4)
    greedy = np.asarray(G.generate(params, CFG, prompts, N_NEW, temperature=0))
    assert len(np.unique(greedy)) > 3
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        out = G.generate(params, CFG, prompts, N_NEW, temperature=1.0, key=jax.random.key(7),
                         **kw)
        np.testing.assert_array_equal(out, greedy, err_msg=str(kw))
    # the top-k filter itself, outside the greedy shortcut
    logits = jax.random.normal(jax.random.key(0), (64, 50))
    keys = jax.random.split(jax.random.key(1), 64)
    draws = jax.jit(jax.vmap(lambda l, k: G.sample_logits(l, k, top_k=1)))(logits, keys)
    np.testing.assert_array_equal(draws, logits.argmax(-1))


def test_top_k_only_samples_the_k_most_likely():
    params = random_params(CFG, seed=5, std=0.1)  # flat-ish distributions: many candidates
    k = 3
    new, logits = G.generate(params, CFG, prompts_of(LENGTHS, CFG.vocab_size), N_NEW, top_k=k,
                             temperature=2.0, key=jax.random.key(0), return_logits=True)
    topk = np.argsort(-np.asarray(logits), axis=-1)[..., :k]
    assert (np.asarray(new)[..., None] == topk).any(-1).all()
    assert (np.asarray(new)[..., None] == topk[..., 1:]).any()  # not just greedy


def draws_of(logits, n, **kw):
    keys = jax.random.split(jax.random.key(123), n)
    draws = jax.jit(jax.vmap(lambda k: G.sample_logits(logits, k, **kw)))(keys)
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


def test_sampled_distribution_matches_softmax_and_rejects_wrong_temperature():
    logits = np.array(jax.random.normal(jax.random.key(3), (12,))) * 1.5
    n, T = 40_000, 0.7
    counts = draws_of(jnp.asarray(logits), n, temperature=T)
    assert chi2_pvalue(counts, softmax(logits / T)) > 1e-4
    for wrong in (0.6, 0.8, 1.0):  # the same bound must catch a nearby wrong temperature
        assert chi2_pvalue(counts, softmax(logits / wrong)) < 1e-6, wrong


def test_top_k_top_p_distribution_is_the_renormalised_nucleus():
    logits = np.array(jax.random.normal(jax.random.key(4), (20,))) * 2.0
    T, k, p = 1.3, 8, 0.8
    counts = draws_of(jnp.asarray(logits), 40_000, temperature=T, top_k=k, top_p=p)
    # numpy reference: temperature, keep the k best, then the smallest prefix with mass >= p
    order = np.argsort(-logits)[:k]
    q = softmax(logits[order] / T)
    n_keep = int(np.searchsorted(np.cumsum(q), p) + 1)
    probs = np.zeros_like(logits)
    probs[order[:n_keep]] = q[:n_keep] / q[:n_keep].sum()
    assert 1 < n_keep < k
    assert chi2_pvalue(counts, probs) > 1e-4
    wrong = np.zeros_like(logits)  # keeping one token too many must fail
    wrong[order[:n_keep + 1]] = q[:n_keep + 1] / q[:n_keep + 1].sum()
    assert counts[order[n_keep]] == 0 and chi2_pvalue(counts, wrong) < 1e-6


def test_padded_vocab_ids_are_never_sampled():
    # the pure filter: padded ids with by far the largest logits still never come out
    logits = jnp.zeros((10,)).at[7:].set(50.0)
    assert draws_of(logits, 2000, temperature=5.0)[7:].sum() > 0  # without the mask they win
    keys = jax.random.split(jax.random.key(0), 2000)
    draws = jax.vmap(lambda k: G.sample_logits(G.mask_vocab(logits, 7), k, temperature=5.0))(keys)
    assert int(draws.max()) < 7
    # end to end: GPT-2's 50257 ids padded to 50304 (tiny width keeps it cheap)
    cfg = gpt_jax.GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=32, vocab_size=50304)
    assert cfg.n_real_vocab == 50257
    params = random_params(cfg, std=0.5)
    params["wte"]["embedding"] = params["wte"]["embedding"].at[50257:].mul(100.0)
    new, logits = G.generate(params, cfg, [[50256]] * 4, 30, temperature=1e3,
                             key=jax.random.key(1), return_logits=True)
    assert int(np.asarray(new).max()) < 50257 and len(np.unique(new)) > 50
    assert np.all(np.asarray(logits)[..., 50257:] <= -1e8)


def test_eos_rows_stop_independently_and_pad_with_eos():
    params = random_params(CFG, seed=6, std=0.15)
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=6)
    key = jax.random.key(2)
    free = np.asarray(G.generate(params, CFG, prompts, N_NEW, key=key))
    eos = int(free[0, 4])
    out = np.asarray(G.generate(params, CFG, prompts, N_NEW, key=key, eos_id=eos))
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
    a = G.generate(params, CFG, prompts, N_NEW, key=jax.random.key(0))
    b = G.generate(params, CFG, prompts, N_NEW, key=jax.random.key(0))
    c = G.generate(params, CFG, prompts, N_NEW, key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()


def test_same_static_shapes_do_not_retrace():
    params = random_params(CFG, seed=9)
    G.generate(params, CFG, prompts_of(LENGTHS, CFG.vocab_size), N_NEW, temperature=0.8)
    G.generate(params, CFG, prompts_of(LENGTHS, CFG.vocab_size), N_NEW, top_k=5)
    n = G.trace_count()
    # other prompts in the same bucket (9..16 tokens), temperatures, seeds and eos ids
    for i in range(3):
        prompts = prompts_of([16 - i, 2 + i, 5], CFG.vocab_size, seed=i)
        G.generate(params, CFG, prompts, N_NEW, temperature=0.5 + i, key=jax.random.key(i),
                   eos_id=i)
        G.generate(params, CFG, prompts, N_NEW, top_k=2 + 10 * i)   # top_k is a runtime value
    assert G.trace_count() == n
    G.generate(params, CFG, prompts_of([17, 2, 5], CFG.vocab_size), N_NEW)  # next bucket
    assert G.trace_count() == n + 1


def test_errors_are_user_errors(monkeypatch):
    params = random_params(CFG)
    with pytest.raises(G.PromptTooLongError) as e:
        G.generate(params, CFG, [[1] * 50], 15)
    msg = str(e.value)
    assert isinstance(e.value, gpt_jax.UserError) and "\n" not in msg
    assert "50" in msg and "15" in msg and "64" in msg
    monkeypatch.setattr(G, "_decode", lambda *a, **k: "decoded")  # no compile needed here
    assert G.generate(params, CFG, [[1] * 50], 14) == "decoded"  # exactly fits
    with pytest.raises(gpt_jax.UserError, match="outside the model's vocabulary"):
        G.generate(params, CFG, [[1, 128]], 4)
    for bad in (dict(temperature=-1), dict(top_k=0), dict(top_p=0), dict(top_p=1.5)):
        with pytest.raises(gpt_jax.UserError):
            G.generate(params, CFG, [[1]], 4, **bad)
    for prompts, n in (([[1]], 0), ([[]], 4), ([], 4)):
        with pytest.raises(gpt_jax.UserError):
            G.generate(params, CFG, prompts, n)


def test_decode_layout_is_made_once_per_params_and_dropped_with_them():
    """The decode loop's weight layout (transposed kernels on CPU) is reused for the same params,
    remade for new or mutable (numpy) params, freed when the params go, and never changes what
    generate() returns."""
    import gc
    params = random_params(CFG, seed=11)
    prompts = prompts_of(LENGTHS, CFG.vocab_size)
    transposed = jax.default_backend() == "cpu"
    first = G.decode_layout(params, CFG)
    assert G.decode_layout(params, CFG) is first
    expected = jax.tree_util.tree_map_with_path(
        lambda path, x: x.T if transposed and path[-1].key == "kernel" else x, params)
    jax.tree_util.tree_map(np.testing.assert_array_equal, first, expected)
    assert first["wte"]["embedding"] is params["wte"]["embedding"]  # kept, not copied
    greedy = lambda p: np.asarray(G.generate(p, CFG, prompts, N_NEW, temperature=0))
    before = greedy(params)
    other = random_params(CFG, seed=12)
    assert G.decode_layout(other, CFG) is not first
    assert (greedy(other) != before).any()  # the other params' layout, not a stale one
    np.testing.assert_array_equal(greedy(params), before)
    as_numpy = jax.tree_util.tree_map(np.asarray, params)
    assert G.decode_layout(as_numpy, CFG) is not G.decode_layout(as_numpy, CFG)  # not cached
    if transposed:
        G.decode_layout(other, CFG)
        assert G._layout is not None
        del other
        gc.collect()
        assert G._layout is None
