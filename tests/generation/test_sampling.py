"""gpt_jax.generation.sampling: the bisection filters against sorted references, first_argmax against
numpy, and the sampled distributions against softmax (chi-squared)."""
import jax
import jax.numpy as jnp
import numpy as np

import gpt_jax.generation.sampling as sampling

from generation_reference import chi2_pvalue, draws_of, softmax


def test_first_argmax_equals_numpy_argmax_with_ties():
    rng = np.random.default_rng(0)
    for shape in ((7,), (3, 50257), (2, 4, 33)):
        x = rng.integers(-3, 4, shape).astype(np.float32)   # many ties: the first index wins
        x.flat[rng.integers(0, x.size, 5)] = -np.inf
        got = np.asarray(jax.jit(sampling.first_argmax)(x))
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
    top_k = jax.jit(sampling.top_k_filter, static_argnums=1)
    top_p = jax.jit(sampling.top_p_filter)
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
    draw = jax.jit(lambda k: sampling.sample_logits(logits, k, temperature=0.7))
    for i in range(10):
        key = jax.random.key(i)
        np.testing.assert_array_equal(draw(key), jax.random.categorical(key, logits / 0.7))

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
