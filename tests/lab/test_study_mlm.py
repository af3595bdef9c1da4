"""GPT vs BERT (gpt_jax/lab/study/mlm.py): BERT's corruption in its proportions, the MLM loss
on the chosen positions only, the causal scores equal to the library's, the left-to-right
scores blind to the future, and measure + section at the tiny size."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.evaluation.scoring import log_probs
from gpt_jax.lab.study import mlm
from gpt_jax.model.gpt import GPT, init_params, mask_vocab
from gpt_jax.train.loss import loss_fn
from study_data import zipf_data


S = mlm.TINY
# jitted whole (cfg static): op-by-op dispatch would compile each primitive apart, slower
mlm_nll = jax.jit(mlm.mlm_nll, static_argnums=1)
causal_nll = jax.jit(mlm.causal_nll, static_argnums=1)
prefix_nll = jax.jit(mlm.prefix_nll, static_argnums=(1, 4, 5))
mlm_loss = jax.jit(mlm.mlm_loss, static_argnums=1)


def test_bert_mask_takes_15_percent_and_splits_them_80_10_10():
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (200, 1000)), jnp.int32)
    inputs, kind = mlm.bert_mask(tokens, jax.random.key(0), 64, 50)
    inputs, kind, tokens = map(np.asarray, (inputs, kind, tokens))
    n = tokens.size
    chosen = kind != mlm.KEPT_OUT
    c = chosen.sum()
    # binomial draws: within 5 sd of the rates
    assert abs(c / n - 0.15) < 5 * np.sqrt(0.15 * 0.85 / n)
    for k, rate in ((mlm.MASKED, 0.8), (mlm.RANDOM, 0.1), (mlm.KEPT, 0.1)):
        assert abs((kind == k).sum() / c - rate) < 5 * np.sqrt(rate * (1 - rate) / c)
    assert (inputs[kind == mlm.MASKED] == 64).all()
    keep = (kind == mlm.KEPT) | ~chosen
    assert (inputs[keep] == tokens[keep]).all()
    rnd = kind == mlm.RANDOM
    assert inputs[rnd].min() >= 0 and inputs[rnd].max() < 50     # a real id, never [MASK]
    # uniform over 50 ids: the random id equals the original 1 time in 50
    same = (inputs[rnd] == tokens[rnd]).mean()
    assert abs(same - 1 / 50) < 5 * np.sqrt(0.02 * 0.98 / rnd.sum())


def test_mlm_loss_is_the_mean_over_the_chosen_positions_only():
    data = zipf_data()
    cfg = mlm.model_config(S, data.size + 1, causal=False)
    params = init_params(cfg, jax.random.key(1))
    w = jnp.asarray(np.random.default_rng(1).integers(0, data.size, (4, S.block_size + 1)),
                    jnp.int32)
    key = jax.random.key(3)
    loss, n = mlm_loss(params, cfg, w, key)
    inputs, kind = mlm.bert_mask(w[:, :-1], key, data.size, data.size)
    nll = np.asarray(mlm_nll(params, cfg, inputs, w[:, :-1]))
    chosen = np.asarray(kind) != mlm.KEPT_OUT
    assert int(n) == chosen.sum() > 0
    assert float(loss) == pytest.approx(nll[chosen].mean(), rel=1e-6)
    assert abs(nll[chosen].mean() - nll.mean()) > 1e-4    # the unchosen would change it
    # [MASK] is never predicted: its logit is out of the softmax
    p = jax.jit(lambda q: jax.nn.softmax(mask_vocab(GPT(cfg).apply({"params": q}, inputs),
                                                     data.size), -1))(params)
    assert float(p[..., data.size].max()) == 0.0


def test_causal_scores_are_the_library_scoring_and_its_loss():
    data = zipf_data()
    cfg = mlm.model_config(S, data.size)
    params = init_params(cfg, jax.random.key(2))
    w = jnp.asarray(np.random.default_rng(2).integers(0, data.size, (3, S.block_size + 1)),
                    jnp.int32)
    nll = np.asarray(causal_nll(params, cfg, w))
    np.testing.assert_allclose(nll, -np.asarray(log_probs(params, cfg, w)), rtol=1e-5,
                               atol=1e-5)
    assert nll.mean() == pytest.approx(float(jax.jit(loss_fn, static_argnums=1)(params, cfg, w)),
                                      rel=1e-5)
    # left to right over a causal model is the same thing: its mask hides the future already
    pre = np.asarray(prefix_nll(params, cfg, w[:, :-1], w[:, 1:], data.size))
    np.testing.assert_allclose(pre, nll, rtol=1e-5, atol=1e-5)


def test_left_to_right_scores_of_a_bidirectional_model_never_see_the_future():
    data = zipf_data()
    cfg = mlm.model_config(S, data.size + 1, causal=False)
    params = init_params(cfg, jax.random.key(4))
    rng = np.random.default_rng(4)
    x = rng.integers(0, data.size, (2, S.block_size))
    y = x.copy()
    cut = S.block_size // 2
    y[:, cut:] = rng.integers(0, data.size, (2, S.block_size - cut))   # another future
    a, b = (np.asarray(prefix_nll(params, cfg, jnp.asarray(v), jnp.asarray(v), data.size,
                                      data.size)) for v in (x, y))
    np.testing.assert_array_equal(a[:, :cut], b[:, :cut])
    # ... while the model as trained (the whole window) does see it
    full = [np.asarray(mlm_nll(params, cfg, jnp.asarray(v), jnp.asarray(x)))
            for v in (x, y)]
    assert np.abs(full[0][:, :cut] - full[1][:, :cut]).max() > 1e-4


@pytest.fixture(scope="module")
def tiny():
    data = zipf_data()
    return data, mlm.measure(S, data, log=lambda *_: None)


def test_measure_counts_the_training_signal_and_compares_the_same_tokens(tiny, tmp_path):
    data, res = tiny
    B, T, steps = S.batch_size, S.block_size, S.steps
    sig = res["signal"]
    assert sig["causal_per_step"] == B * T and sig["causal_total"] == steps * B * T
    mean, sd = 0.15 * steps * B * T, np.sqrt(0.15 * 0.85 * steps * B * T)
    assert abs(sig["mlm_total"] - mean) < 5 * sd
    assert sig["mlm_supervised"][-1] == sig["mlm_total"] and sig["mlm_supervised"][0] == 0
    m, k = res["masked"], res["masked"]["by_kind"]
    assert sum(v["n"] for v in k.values()) == m["n"] > 0
    kinds = [v for v in k.values() if v["n"]]
    for name in ("mlm", "causal", "unigram"):   # the split is a partition of the chosen
        assert m[name] == pytest.approx(sum(v["n"] * v[name] for v in kinds) / m["n"],
                                        rel=1e-5)
    n_val = S.eval_batches * B
    assert res["left_to_right"]["n"] == n_val * (T - 1)
    assert res["leakage"]["n"] == res["val_tokens"] == n_val * T
    assert res["params"]["mlm"] - res["params"]["causal"] == S.n_embd   # one [MASK] row
    assert all(np.isfinite(res["signal"]["mlm_val"]))
    md = mlm.section(res, str(tmp_path))
    assert md.startswith("## ") and "(mlm.png)" in md and "two-sided context predicts" in md
    assert os.path.getsize(tmp_path / "mlm.png") > 0
