"""A decode step's attention over its KV cache: XLA's, or on CPU a C++ kernel that reads only
the entries written so far.

XLA compiles a step for a cache of static length S and reads all S entries every step, the
unwritten ones too (they are masked out), and it has no way to read a traced number of them
without copying them first (a dynamic slice feeding a dot is materialized; loops over blocks
were slower than the whole read). At batch 8 with 512 + 512 tokens that read is about half
the step's bytes. cache_attention.cc does the same softmax(q k^T / sqrt(D)) v over entries
[0, length) only, in one pass over the keys and one over the values, on XLA's intra-op
thread pool, and is called through jax.ffi (XLA's custom-call interface for CPU code).

It is built from source on first use, for this machine (-march=native), with the C++
compiler on PATH ($CXX, else c++), into ~/.cache/gpt_jax/kernels ($GPT_JAX_KERNEL_DIR)
under a name keyed by the source, jaxlib, the compiler and the CPU, so a shared home on
other hardware builds its own. Where it cannot run (no compiler, a failed build, another
backend, a bfloat16 cache, GPTConfig.attn_impl="xla", GPT_JAX_CACHE_KERNEL=0) the step uses
XLA's code, the same function: tests hold the two to each other and to transformers.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings

import jax
import jax.numpy as jnp
import jaxlib

from gpt_jax.model.config import GPTConfig

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache_attention.cc")
TARGET = "gpt_jax_cache_attention"      # the FFI target's name, registered for the CPU
SYMBOL = "GptJaxCacheAttention"         # the handler cache_attention.cc exports
SWITCH = "GPT_JAX_CACHE_KERNEL"         # "0": never build or call the kernel
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 300


class KernelBuildError(RuntimeError):
    """The kernel could not be compiled or loaded (the message says why)."""


def kernel_dir() -> str:
    """Where built kernels are kept: $GPT_JAX_KERNEL_DIR, else gpt_jax/kernels under
    $XDG_CACHE_HOME or ~/.cache."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("GPT_JAX_KERNEL_DIR") or os.path.join(cache, "gpt_jax", "kernels")


def _cpu() -> str:
    """This CPU's feature flags (what -march=native compiles for), or its name elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


def build(out_dir: str | None = None) -> str:
    """Compile cache_attention.cc for this machine, or find it compiled before.

    Args:
      out_dir: where the library goes (default kernel_dir()).

    Returns:
      The path of the shared library; its name carries a hash of the source, jaxlib's version,
      the compiler's version, the CPU's flags and the compile flags.

    Raises:
      KernelBuildError: no C++ compiler, an unwritable directory, or a failed build (with
        the first error line the compiler printed).
    """
    cxx = shutil.which(os.environ.get("CXX", "c++"))
    if cxx is None:
        raise KernelBuildError(f"no C++ compiler ({os.environ.get('CXX', 'c++')}) on PATH")
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
        with open(SOURCE, "rb") as f:
            source = f.read()
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"{cxx} --version or {SOURCE} could not be read: {e}") from None
    key = hashlib.sha256(b"\0".join(x.encode() if isinstance(x, str) else x for x in (
        source, jaxlib.__version__, version, _cpu(), " ".join(FLAGS)))).hexdigest()[:16]
    out_dir = out_dir or kernel_dir()
    path = os.path.join(out_dir, f"cache_attention-{key}.so")
    if os.path.exists(path):
        return path
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)    # beside path: os.replace
        os.close(fd)
    except OSError as e:
        raise KernelBuildError(f"{out_dir} is not writable ({e.strerror or e}): set "
                               "GPT_JAX_KERNEL_DIR to a writable directory") from None
    cmd = [cxx, *FLAGS, "-isystem", jax.ffi.include_dir(), SOURCE, "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            first = next((x for x in lines if "error" in x), lines[-1] if lines else "")
            raise KernelBuildError(f"{' '.join(cmd)} failed: {first.strip()}")
        os.replace(tmp, path)     # atomic: a concurrent build or a crash leaves no half file
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(f"{cxx} could not build {SOURCE}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


_LOCK = threading.Lock()
_READY: dict[str, bool] = {}          # "ready": the first kernel_ready()'s answer, per process


def kernel_ready() -> bool:
    """Whether the kernel is built (the first call compiles it, ~2 s, once per machine) and
    registered with XLA in this process. False when GPT_JAX_CACHE_KERNEL=0, or, with one
    RuntimeWarning that says why, when it cannot be built or loaded: decode steps then read
    the whole cache."""
    if os.environ.get(SWITCH, "1") == "0":
        return False
    with _LOCK:                       # threads tracing at once build and register it once
        if "ready" not in _READY:
            _READY["ready"] = _register()
        return _READY["ready"]


def _register() -> bool:
    try:
        library = ctypes.cdll.LoadLibrary(build())
        handler = jax.ffi.pycapsule(getattr(library, SYMBOL))
        jax.ffi.register_ffi_target(TARGET, handler, platform="cpu")
    except (KernelBuildError, OSError, AttributeError) as e:
        warnings.warn(f"gpt_jax: the CPU cache-attention kernel is not available ({e}); "
                      "decode steps read the whole KV cache instead, which is slower for "
                      f"long decodes. Install a C++ compiler, or set {SWITCH}=0 to use XLA's "
                      "attention without this warning.", RuntimeWarning, stacklevel=3)
        return False
    return True


def uses_kernel(cfg: GPTConfig, dtype) -> bool:
    """Whether a decode step of this config, with a cache of this dtype, calls the kernel:
    attn_impl "auto", float32, the CPU backend, and the kernel built."""
    return (cfg.attn_impl == "auto" and jnp.dtype(dtype) == jnp.float32
            and jax.default_backend() == "cpu" and kernel_ready())


def xla_cache_attention(q, k_cache, v_cache, mask):
    """Attention of one query per row over the whole cache, masked, as XLA runs it.

    q (N, D) with N = B * H (row n: head n % H of batch row n // H); k_cache, v_cache
    (N, S, D); mask (B, S) bool, True where a query may look -> (N, D) in q's dtype. Scores
    and softmax in float32; a masked entry scores float32's lowest value."""
    (N, D), B = q.shape, mask.shape[0]
    s = jnp.einsum("nd,nsd->ns", q, k_cache,
                   preferred_element_type=jnp.float32) / math.sqrt(D)          # (N, S)
    s = jnp.where(mask[:, None, :], s.reshape(B, N // B, -1), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(s, axis=-1).astype(q.dtype).reshape(N, -1)
    return jnp.einsum("ns,nsd->nd", probs, v_cache)


def cache_attention(cfg: GPTConfig, q, k_cache, v_cache, mask, length):
    """xla_cache_attention(q, k_cache, v_cache, mask) reading only entries [0, length).

    Args:
      cfg: the model's config (attn_impl "xla" keeps XLA's code; see uses_kernel).
      q: (N, D), N = B * H. k_cache, v_cache: (N, S, D), this step's entry written.
      mask: (B, S) bool; it must be False at and after `length` (decode_mask is).
      length: int32 scalar, traced: the entries written, this step's included.

    Returns:
      (N, D) in q's dtype.
    """
    if not (uses_kernel(cfg, k_cache.dtype) and q.dtype == jnp.float32):
        return xla_cache_attention(q, k_cache, v_cache, mask)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(q.shape, jnp.float32),
                            vmap_method="sequential")
    return call(q, k_cache, v_cache, mask, jnp.reshape(length, (1,)).astype(jnp.int32))
