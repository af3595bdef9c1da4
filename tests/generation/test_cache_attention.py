"""gpt_jax.generation.cache_attention: the CPU kernel equals XLA's attention over the cache,
reads nothing at or after `length`, builds once per machine, and decoding with it gives the
tokens decoding with XLA's attention gives."""
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.generation import cache_attention as ca
from gpt_jax.generation.decoding import generate
from gpt_jax.generation.step import decode_mask
from gpt_jax.model.config import GPTConfig

from conftest import ROOT, SUPPORT
from generation_reference import LENGTHS, prompts_of, random_params, tiny

AUTO, XLA = GPTConfig(), GPTConfig(attn_impl="xla")
HAS_CXX = shutil.which(os.environ.get("CXX", "c++")) is not None

# Where a compiler is on PATH (CI's machine) the kernel must build: a skip there would let a
# broken kernel pass as "not available".
needs_kernel = pytest.mark.skipif(not HAS_CXX or os.environ.get(ca.SWITCH) == "0",
                                  reason="no C++ compiler on PATH, or the kernel switched off")


def inputs(B, H, S, D, length, seed=0):
    """Random q, k, v (heads-major) and a decode mask at index length - 1 with left padding
    of 0 .. B - 1 entries (the rows of a batch of unequal prompts)."""
    r = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(r.standard_normal(s), jnp.float32)
               for s in ((B * H, D), (B * H, S, D), (B * H, S, D)))
    pad = jnp.minimum(jnp.arange(B), length - 1)
    mask = decode_mask(pad, jnp.asarray([length - 1]), S)[:, 0, 0]          # (B, S)
    return q, k, v, mask


@needs_kernel
def test_kernel_builds_and_registers():
    assert ca.kernel_ready()
    assert ca.uses_kernel(AUTO, jnp.float32)
    assert not ca.uses_kernel(XLA, jnp.float32)          # attn_impl="xla": XLA's code
    assert not ca.uses_kernel(AUTO, jnp.bfloat16)        # the kernel is float32 only


@needs_kernel
@pytest.mark.parametrize("B,H,S,D,length", [
    (1, 1, 1, 4, 1), (2, 3, 17, 10, 9), (3, 4, 40, 16, 40), (8, 12, 64, 64, 33)])
def test_kernel_equals_xla_attention(B, H, S, D, length):
    q, k, v, mask = inputs(B, H, S, D, length)
    f = jax.jit(ca.cache_attention, static_argnums=0)
    got = f(AUTO, q, k, v, mask, jnp.int32(length))
    want = f(XLA, q, k, v, mask, jnp.int32(length))
    assert "custom_call" in f.lower(AUTO, q, k, v, mask, jnp.int32(length)).as_text()
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@needs_kernel
def test_kernel_reads_nothing_after_length():
    """NaN in every entry at and after `length` (keys and values), and a mask that lets the
    query see them: the kernel's output is the one over the clean entries before `length`, so
    it read none after; XLA's, which reads the whole cache, is NaN."""
    B, H, S, D, length = 2, 3, 24, 8, 11
    q, k, v, mask = inputs(B, H, S, D, length, seed=1)
    poison = lambda a: a.at[:, length:].set(jnp.nan)
    open_mask = mask.at[:, length:].set(True)
    got = ca.cache_attention(AUTO, q, poison(k), poison(v), open_mask, jnp.int32(length))
    want = ca.xla_cache_attention(q, k, v, mask)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    assert np.isnan(np.asarray(ca.xla_cache_attention(q, poison(k), poison(v), open_mask))).all()


@needs_kernel
def test_kernel_under_vmap():
    q, k, v, mask = inputs(2, 2, 12, 8, 7)
    stack = lambda a: jnp.stack([a, a[::-1]])
    got = jax.vmap(lambda *a: ca.cache_attention(AUTO, *a, jnp.int32(7)))(
        stack(q), stack(k), stack(v), stack(mask))
    want = jax.vmap(ca.xla_cache_attention)(stack(q), stack(k), stack(v), stack(mask))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)


@needs_kernel
def test_decoding_with_the_kernel_gives_xla_attentions_tokens():
    """Greedy tokens and logits of generate() with the kernel (attn_impl "auto") and with XLA's
    attention ("xla"), on unequal prompts, over a segmented cache and a whole one."""
    cfg = tiny()
    params = random_params(cfg, seed=3)
    prompts = prompts_of(LENGTHS, cfg.vocab_size)
    a, la = generate(params, cfg, prompts, 20, temperature=0, return_logits=True)
    b, lb = generate(params, cfg.replace(attn_impl="xla"), prompts, 20, temperature=0,
                     return_logits=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(la, lb, rtol=1e-5, atol=1e-5)


def test_build_is_keyed_and_reused(tmp_path, monkeypatch):
    if not HAS_CXX:
        pytest.skip("no C++ compiler on PATH")
    path = ca.build(str(tmp_path))
    assert os.path.basename(path).startswith("cache_attention-") and os.path.exists(path)
    stamp = os.stat(path).st_mtime_ns
    assert ca.build(str(tmp_path)) == path and os.stat(path).st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(path)]  # no temp left


def test_build_errors_say_why(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-gpt-jax")
    with pytest.raises(ca.KernelBuildError, match="no C\\+\\+ compiler"):
        ca.build(str(tmp_path))
    if not HAS_CXX:
        return
    monkeypatch.setenv("CXX", shutil.which("c++"))
    monkeypatch.setattr(ca, "SOURCE", str(tmp_path / "broken.cc"))
    (tmp_path / "broken.cc").write_text("this is not C++\n")
    with pytest.raises(ca.KernelBuildError, match="failed: .*error"):
        ca.build(str(tmp_path / "out"))
    assert list((tmp_path / "out").iterdir()) == []      # the failed build left nothing


def test_xla_path_without_the_kernel():
    """attn_impl="xla" (and any dtype but float32) runs XLA's code: no custom call."""
    q, k, v, mask = inputs(2, 2, 12, 8, 7)
    f = jax.jit(ca.cache_attention, static_argnums=0)
    assert "custom_call" not in f.lower(XLA, q, k, v, mask, jnp.int32(7)).as_text()
    bf = [a.astype(jnp.bfloat16) for a in (q, k, v)]
    assert "custom_call" not in f.lower(AUTO, *bf, mask, jnp.int32(7)).as_text()


FALLBACK = """
import warnings, numpy as np
from gpt_jax.generation.decoding import generate
from generation_reference import LENGTHS, prompts_of, random_params, tiny
cfg = tiny()
params, prompts = random_params(cfg, seed=3), prompts_of(LENGTHS, tiny().vocab_size)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    a = generate(params, cfg, prompts, 12, temperature=0)
    b = generate(params, cfg, prompts, 12, temperature=0)      # warned once, not per call
np.save("tokens.npy", np.asarray(a))
print(sum("kernel is not available" in str(w.message) for w in caught))
"""


def test_without_a_compiler_decoding_warns_once_and_uses_xla(tmp_path):
    """No compiler and no kernel built before: generate() still decodes, with XLA's attention
    (its tokens are the kernel path's), after one warning that says what to do."""
    env = {**os.environ, "CXX": "no-such-compiler-gpt-jax", "JAX_PLATFORMS": "cpu",
           "GPT_JAX_KERNEL_DIR": str(tmp_path / "kernels"),
           "PYTHONPATH": os.pathsep.join([SUPPORT, ROOT])}
    env.pop(ca.SWITCH, None)
    r = subprocess.run([sys.executable, "-c", FALLBACK], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["1"]
    cfg = tiny()
    want = generate(random_params(cfg, seed=3), cfg.replace(attn_impl="xla"),
                    prompts_of(LENGTHS, cfg.vocab_size), 12, temperature=0)
    np.testing.assert_array_equal(np.load(tmp_path / "tokens.npy"), want)
