"""Weight tying (gpt_jax/lab/study/tying.py): the agreement measure (1 for a tied model by
construction, ~0 for independent random matrices, Spearman as scipy's), the equal-parameter
width, the frequency buckets, the per-token scores, and measure + section at the tiny size."""
import os

import jax
import numpy as np
import pytest

from gpt_jax.evaluation.scoring import log_probs
from gpt_jax.lab.study import tying
from gpt_jax.model.gpt import count_params, init_params
from study_data import zipf_data


S = tying.TINY


def test_agreement_is_one_when_tied_and_near_zero_for_independent_matrices():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(200, 64)), rng.normal(size=(200, 64))
    same = tying.agreement(a, a)
    assert same["pearson"] == pytest.approx(1.0, abs=1e-12)
    assert same["spearman"] == pytest.approx(1.0, abs=1e-12)
    # cosine similarity ignores each row's length: a rescaled copy agrees fully too
    assert tying.agreement(a, a * rng.uniform(0.5, 2, (200, 1)))["pearson"] == \
        pytest.approx(1.0, abs=1e-12)
    apart = tying.agreement(a, b)       # 19,900 pairs: sd of r about 1 / sqrt(19900) = 0.007
    assert abs(apart["pearson"]) < 0.05 and abs(apart["spearman"]) < 0.05
    stats = pytest.importorskip("scipy.stats")
    def sims(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        return (e @ e.T)[np.triu_indices(len(e), k=1)]
    x, y = sims(a), sims(a + 0.5 * b)
    assert tying.agreement(a, a + 0.5 * b)["spearman"] == pytest.approx(
        stats.spearmanr(x, y).statistic, abs=1e-9)


def test_equal_width_matches_the_untied_parameter_count():
    cfg = tying.model_config(tying.FULL, 1024)
    goal = count_params(cfg.replace(tie_embeddings=False))
    assert goal - count_params(cfg) == 1024 * 64
    c = tying.equal_width(cfg)
    assert c % cfg.n_head == 0
    gap = abs(count_params(cfg.replace(n_embd=c)) - goal)
    for other in (c - cfg.n_head, c + cfg.n_head):      # the neighbours are no nearer
        assert abs(count_params(cfg.replace(n_embd=other)) - goal) >= gap
    assert gap < 0.02 * goal


def test_buckets_split_the_vocabulary_by_train_count():
    counts = np.array([50, 9, 30, 1, 7, 7, 3, 400])              # last: UNK
    b = tying.buckets(counts)
    assert [x["name"] for x in b] == ["frequent", "middle", "rare", "UNK"]
    ids = np.concatenate([x["ids"] for x in b])
    assert sorted(ids.tolist()) == list(range(8)) and b[3]["ids"].tolist() == [7]
    assert counts[b[0]["ids"]].min() >= counts[b[1]["ids"]].max()
    assert counts[b[1]["ids"]].min() >= counts[b[2]["ids"]].max()


def test_token_nll_of_stacked_seeds_is_the_library_scoring():
    cfg = tying.model_config(S, 48)
    ps = [init_params(cfg, jax.random.key(i)) for i in (0, 1)]
    stacked = jax.tree.map(lambda *a: np.stack(a), *ps)
    w = np.random.default_rng(0).integers(0, 48, (5, S.block_size + 1)).astype(np.int32)
    nll = tying.token_nll(stacked, cfg, w, chunk=2)               # chunks joined in order
    for i, p in enumerate(ps):
        np.testing.assert_allclose(nll[i], -np.asarray(log_probs(p, cfg, w)), rtol=1e-5,
                                   atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
    data = zipf_data()
    return data, tying.measure(S, data, log=lambda *_: None)


def test_measure_splits_the_loss_by_frequency_and_compares_embeddings(tiny, tmp_path):
    data, res = tiny
    arms, bks = res["arms"], res["buckets"]
    assert arms["untied"]["params"] - arms["tied"]["params"] == data.size * S.n_embd
    assert sum(b["n_ids"] for b in bks) <= data.size     # buckets with no val token left out
    assert sum(b["val_share"] for b in bks) == pytest.approx(1.0)
    for arm in arms.values():            # the buckets partition the scored tokens
        assert len(arm["val"]) == len(S.seeds)
        for i, v in enumerate(arm["val"]):
            parts = sum(b["val_share"] * arm["buckets"][j][i] for j, b in enumerate(bks)
                        if b["val_share"])
            assert parts == pytest.approx(v, rel=1e-5)
    ag = res["agreement"]
    assert ag["tied wte vs itself"]["pearson"][0] == pytest.approx(1.0, abs=1e-9)
    assert res["scored_tokens"] == S.max_windows * S.block_size
    md = tying.section(res, str(tmp_path))
    assert md.startswith("## ") and "(tying.png)" in md
    assert os.path.getsize(tmp_path / "tying.png") > 0
