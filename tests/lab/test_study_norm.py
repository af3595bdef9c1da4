"""The Pre-LN / Post-LN training sweep (gpt_jax/lab/study/norm.py): the vmapped runs train as
separate optax.adam runs would, the schedule and the spike measure are what the report says,
and the cells count failures instead of stopping at them."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gpt_jax.lab.study import norm
from gpt_jax.lab.study.probe import arm_config, init_stacked
from gpt_jax.lab.study.vocab import small_vocab
from gpt_jax.model.gpt import GPT
from gpt_jax.train.loss import loss_fn
import gpt_jax.data as data_lib
from study_data import ZipfStream


@pytest.fixture(scope="module")
def data():
    return small_vocab(ZipfStream(), 256)


@pytest.fixture(scope="module")
def result(data):
    return norm.measure(norm.TINY, data, log=lambda *_: None)


def test_schedule_and_spike():
    assert [norm.lr_at(1e-3, 4, t) for t in range(6)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert norm.lr_at(1e-3, 0, 0) == 1e-3
    assert norm.spike([5, 4, 3, 2, 1], 1) == 0.0
    assert norm.spike([5, 3, 4.5, 2, 2.5], 1) == pytest.approx(1.5)      # 3 -> 4.5
    assert norm.spike([5, 3, 4.5, 2, 2.5], 2) == pytest.approx(0.0)      # averages 4, 3.75, ...
    assert norm.spike([5, 4, float("nan"), 3], 1) == math.inf


def test_cells_count_failures_and_stuck_seeds():
    s = norm.Settings(depths=(2,), arms=("pre-gpt2",), lrs=(1e-3,), warmups=(0,), seeds=(0, 1, 2),
                      smooth=1)
    runs = [{"lr": 1e-3, "warmup": 0, "seed": 0, "val": 4.0, "losses": [6.0, 5.0]},
            {"lr": 1e-3, "warmup": 0, "seed": 1, "val": 4.95, "losses": [6.0, 7.0]},
            {"lr": 1e-3, "warmup": 0, "seed": 2, "val": math.nan, "losses": [6.0, None]}]
    (c,) = norm.cells(s, 5.0, {"pre-gpt2/2": runs})
    assert (c["nonfinite"], c["stuck"], c["spike"]) == (1, 1, math.inf)
    assert c["final"] == pytest.approx(-0.525) and c["final_sd"] == pytest.approx(
        np.std([-1.0, -0.05], ddof=1))


def test_vmapped_runs_are_separate_adam_runs(result, data):
    """Recompute one run (post-xavier, warm-up 5, seed 1) with optax.adam and its own schedule."""
    s = norm.TINY
    cfg = arm_config("post-xavier", n_layer=6, n_embd=s.n_embd, n_head=s.n_head,
                     block_size=s.block_size, vocab_size=data.size)
    tx = optax.adam(lambda t: 1e-3 * jnp.minimum(1.0, (t + 1) / 5),
                    b1=0.9, b2=0.98, eps=1e-9)
    model = GPT(cfg, scan_layers=True)
    params = init_stacked(cfg, jax.random.key(1))
    state = tx.init(params)
    sampler = data_lib.BatchSampler(data, block_size=s.block_size, batch_size=s.batch_size,
                                    seed=1)

    @jax.jit
    def step(params, state, tokens):
        loss, g = jax.value_and_grad(lambda p: loss_fn(p, cfg, tokens, model=model))(params)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state, loss
    ref = []
    for t in range(4):
        params, state, loss = step(params, state, sampler.train_batch(t)[0])
        ref.append(float(loss))
    (run,) = [r for r in result["runs"]["post-xavier/6"] if r["warmup"] == 5 and r["seed"] == 1]
    np.testing.assert_allclose(run["losses"][:4], ref, rtol=2e-4)


def test_every_step_runs_and_the_section_reports_every_cell(result, tmp_path):
    s = norm.TINY
    n_cells = len(s.depths) * len(s.arms) * len(s.lrs) * len(s.warmups)
    assert len(result["cells"]) == n_cells
    for runs in result["runs"].values():
        assert len(runs) == len(s.lrs) * len(s.warmups) * len(s.seeds)
        for r in runs:
            assert len(r["losses"]) == s.steps and all(x is not None for x in r["losses"])
            assert abs(r["losses"][0] - math.log(256)) < 0.2       # about uniform at init
        # same seed, same init, batches and val windows: neither the first loss nor the
        # unigram loss of the scored windows depends on lr/warm-up
        for k in s.seeds:
            assert len({r["losses"][0] for r in runs if r["seed"] == k}) == 1
            assert len({r["unigram"] for r in runs if r["seed"] == k}) == 1
        assert len({r["unigram"] for r in runs}) == len(s.seeds)
    md = norm.section(result, str(tmp_path))
    assert md.count("\n| 6 |") == n_cells and "held" in md
    assert (tmp_path / "norm.png").stat().st_size > 0
