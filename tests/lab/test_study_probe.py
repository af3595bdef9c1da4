"""The Pre-LN / Post-LN init probe (gpt_jax/lab/study/probe.py) against Xiong et al. 2020's
theory: under Xavier init without residual scaling, Pre-LN's last-layer gradient falls like
1/sqrt(L) and Post-LN's does not; one Adam step moves a deep Post-LN net's output more.
Seeds and batches are fixed, so the numbers are the same on every machine."""
import math

import jax
import numpy as np
import pytest

from gpt_jax.lab.study import probe
from gpt_jax.lab.study.vocab import small_vocab
from study_data import ZipfStream


@pytest.fixture(scope="module")
def result():
    return probe.measure(probe.TINY, small_vocab(ZipfStream(), 256), log=lambda *_: None)


def test_pre_ln_gradient_falls_like_one_over_sqrt_depth_post_ln_does_not(result):
    deep = str(probe.TINY.depths[-1])
    assert result["theory"]["pre-xavier"][deep] == math.sqrt(6 / 24)
    pre = probe.relative_last(result, "pre-xavier")[deep]
    post = probe.relative_last(result, "post-xavier")[deep]
    assert 0.35 < pre < 0.65          # theory 0.5
    assert post > 0.8                 # theory 1: no 1/sqrt(L) fall
    assert post > 1.6 * pre


def test_one_adam_step_moves_deep_post_ln_more(result):
    change = lambda arm, L: result["rows"][arm][str(L)]["change"]
    post = change("post-xavier", 24) / change("post-xavier", 6)
    pre = change("pre-xavier", 24) / change("pre-xavier", 6)
    assert post > 1.4 and post > pre


def test_rows_are_per_layer_and_the_section_reports_them(result, tmp_path):
    for arm, rows in result["rows"].items():
        for L, r in rows.items():
            assert len(r["grad"]) == int(L) and all(g > 0 for g in r["grad"])
            assert r["last"] == pytest.approx(r["grad"][-1])
            assert abs(r["loss"] - math.log(256)) < 0.2   # at init: about uniform
    md = probe.section(result, str(tmp_path))
    assert md.startswith("## ") and "| post-xavier | 24 |" in md and "held" in md
    assert (tmp_path / "probe.png").stat().st_size > 0


def test_arms_are_the_papers_models():
    cfg = probe.arm_config("post-xavier", n_layer=3, n_embd=32, n_head=2, block_size=8,
                           vocab_size=64)
    assert (cfg.norm, cfg.init, cfg.final_ln) == ("post", "xavier", False)
    assert probe.arm_config("pre-gpt2", n_layer=3, n_embd=32, n_head=2, block_size=8,
                            vocab_size=64).is_gpt2
    p = probe.init_stacked(cfg, jax.random.key(0))
    assert "ln_f" not in p and p["h"]["mlp"]["c_proj"]["kernel"].shape == (3, 128, 32)
