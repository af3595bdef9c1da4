"""The generation-strategies topic (gpt_jax/lab/study/strategies.py): the text figures on
hand-made sequences, and the tiny run: the model trained once through the Trainer and reused,
every figure computed from the tokens generate() returns, the real text's log p as the
model's own forward gives it."""
import jax
import numpy as np
import pytest

import gpt_jax.data as data_lib
from gpt_jax.generation.decoding import generate
from gpt_jax.lab.study import strategies as st
from gpt_jax.model.gpt import GPT


def test_repetition_and_distinct_on_hand_made_sequences():
    assert st.repetition_rate([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 / 5)
    assert st.repetition_rate([7] * 10) == pytest.approx(1 - 1 / 7)   # one 4-gram, 7 times
    assert st.repetition_rate([1, 2, 3]) == 0.0                     # no 4-gram at all
    assert st.distinct_n([[1, 1, 2], [1, 2]], 1) == pytest.approx(2 / 5)
    assert st.distinct_n([[1, 1, 2], [1, 2]], 2) == pytest.approx(2 / 3)
    f = st.text_figures([[5, 6, 7, 8, 5, 6, 7, 8, 9]], (4, 8, 9))
    assert f["rep_at"] == [0.0, pytest.approx(1 / 5), pytest.approx(1 / 6)]


def test_summarise_is_mean_and_sample_sd_over_seeds():
    out = st.summarise([{"x": 1.0, "v": [1.0, 2.0]}, {"x": 3.0, "v": [3.0, 2.0]}])
    assert out["x"] == 2.0 and out["x_sd"] == pytest.approx(np.sqrt(2))
    assert out["v"] == [2.0, 2.0] and out["v_sd"] == [pytest.approx(np.sqrt(2)), 0.0]
    one = st.summarise([{"x": 1.0}])
    assert one["x_sd"] == 0.0 and one["seeds"] == 1


@pytest.fixture(scope="module")
def tiny(builtin_data, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("study-model"))
    data = data_lib.TokenData(builtin_data, block_size=64, vocab_size=50257)
    res = st.measure(st.TINY, data, model_dir=model_dir, log=lambda *a: None)
    return res, data, model_dir


def test_the_model_is_trained_once_and_reused(tiny, monkeypatch):
    res, _, model_dir = tiny
    assert res["model"]["trained_now"] and res["model"]["step"] == 6
    assert [e[0] for e in res["model"]["curve"]["eval"]] == [0, 6]

    def no_training(*a, **k):
        raise AssertionError("retrained a finished model")
    monkeypatch.setattr(st, "Trainer", no_training)
    params, cfg, info = st.cached_model(st.TINY, model_dir, log=lambda *a: None)
    assert not info["trained"] and info["step"] == 6 and cfg.n_layer == 1


def test_figures_come_from_the_tokens_generate_returns(tiny):
    res, data, model_dir = tiny
    params, cfg, _ = st.cached_model(st.TINY, model_dir, log=lambda *a: None)
    s = st.TINY
    windows = st.prompt_windows(s, data)
    prompts = windows[:, :s.prompt_len]
    assert res["prompts"] == prompts.tolist()
    assert res["tokens"]["real text"] == windows[:, s.prompt_len:].tolist()
    greedy = np.asarray(generate(params, cfg, prompts, s.new_tokens, temperature=0.0))
    assert res["tokens"]["greedy"] == greedy.tolist()
    row = res["rows"]["greedy"]
    assert row["repetition"] == pytest.approx(
        np.mean([st.repetition_rate(t) for t in greedy.tolist()]))
    assert row["distinct_2"] == pytest.approx(st.distinct_n(greedy.tolist(), 2))
    # the real continuation's log p, from the model's own forward pass
    full = jax.numpy.asarray(windows)
    logits = GPT(cfg).apply({"params": params}, full[:, :-1])
    lp = jax.nn.log_softmax(logits, -1)
    lp = np.take_along_axis(np.asarray(lp), windows[:, 1:, None], -1)[..., 0]
    assert res["rows"]["real text"]["logp"] == pytest.approx(
        lp[:, s.prompt_len - 1:].mean(), abs=1e-4)
    # sampled strategies: one row per seed averaged; deterministic ones: one run
    assert res["rows"]["T=0.7"]["seeds"] == len(s.seeds) and row["seeds"] == 1
    assert res["rows"]["T=1.3"]["distinct_2_sd"] >= 0.0


def test_section_writes_the_figures_and_a_row_per_strategy(tiny, tmp_path):
    res = tiny[0]
    text = st.section(res, str(tmp_path))
    assert text.startswith("## Generation strategies")
    for name, _, _ in st.strategy_list(st.TINY):
        assert f"\n| {name} |" in text
    assert "| real text |" in text and "unigram" in text
    assert (tmp_path / "strategies.png").stat().st_size > 1000
    assert (tmp_path / "strategies_train.png").stat().st_size > 1000
