"""The KV-cache topic (gpt_jax/lab/study/kv.py): the Δtime/Δn estimator against synthetic
timings with a known step cost, the cache's bytes, and the tiny measurement + report."""
import math

import pytest

from gpt_jax.lab.study import kv
from gpt_jax.model.config import GPTConfig


def cached_call(P, n, a, c, prefill=0.25, dispatch=1e-3):
    """Seconds of a generate() call as the cached loop spends them: the prefill (any cost
    in P), then n - 1 steps, each reading the whole preallocated cache S = P + n - 1."""
    S = P + n - 1
    return dispatch + prefill * P + (n - 1) * (a + c * S)


@pytest.mark.parametrize("P,n1,n2", [(8, 8, 72), (512, 2, 10), (1024, 8, 72)])
def test_marginal_cost_recovers_a_linear_step_cost(P, n1, n2):
    a, c = 2e-3, 3e-6
    est = kv.marginal_cost(cached_call(P, n1, a, c), cached_call(P, n2, a, c), n1, n2)
    L = kv.effective_length(P, n1, n2)
    assert est == pytest.approx(a + c * L, rel=1e-9)
    # the naive total / n does not: it carries the prefill and dispatch
    assert cached_call(P, n2, a, c) / n2 > 1.5 * est


def test_slopes_and_linear_fit_recover_known_laws():
    x = [16, 64, 256, 1024]
    assert kv.loglog_slope(x, [3.0] * 4) == pytest.approx(0, abs=1e-12)
    assert kv.loglog_slope(x, [2 * v for v in x]) == pytest.approx(1)
    assert kv.loglog_slope(x, [5 * v * v for v in x]) == pytest.approx(2)
    a, c = kv.linear_fit(x, [0.5 + 0.01 * v for v in x])
    assert (a, c) == (pytest.approx(0.5), pytest.approx(0.01))


def test_cache_bytes_is_keys_and_values_of_every_layer():
    gpt2 = GPTConfig.from_preset("gpt2")
    assert kv.cache_bytes(gpt2, 1024) == 2 * 12 * 1024 * 768 * 4 == 75_497_472
    assert kv.cache_bytes(gpt2, 1024, batch=8) == 8 * kv.cache_bytes(gpt2, 1024)


def test_tiny_measure_and_section(tmp_path):
    res = kv.measure(kv.TINY, log=lambda *a: None)
    (w,) = res["widths"]
    spec = kv.TINY.widths[0]
    assert [r["prompt"] for r in w["rows"]] == list(spec.prompts)
    cfg = spec.config()
    for r in w["rows"]:
        assert r["length"] == r["prompt"] + spec.n1 + spec.n2 - 2
        assert r["cache_bytes"] == kv.cache_bytes(cfg, r["length"])
        assert r["same_tokens"] is True          # cached decoding == full recomputation
        for path in ("cached", "uncached"):
            assert math.isfinite(r[f"{path}_min_s"]) and math.isfinite(r[f"{path}_median_s"])
            assert r[f"{path}_call_s"] > 0
    text = kv.section(res, str(tmp_path))
    assert text.startswith("## KV cache") and "| 8 | 14 |" in text and "slope" in text
    assert (tmp_path / "kvcache.png").stat().st_size > 1000
