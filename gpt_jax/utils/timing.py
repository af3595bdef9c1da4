"""Timing jitted work: compile time apart, warm-up excluded, every call waited for, repeats
summarised by median / min / max, peers interleaved. Shared by the trainer (its MFU peak) and
the bench sections (gpt_jax/lab/bench/)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

try:
    import resource          # Unix: counts of page faults
except ImportError:          # Windows
    resource = None


@dataclass
class Timing:
    times: list[float]   # seconds per call, one entry per repeat

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: above ~0.2 the machine was noisy and the figure is shaky."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0


def block(x):
    """Wait for x's device work: JAX dispatches asynchronously, so a clock read before this
    measures only the dispatch."""
    return jax.block_until_ready(x)


def compile_seconds(jitted: Callable, *args, **kwargs) -> tuple[Callable, float]:
    """Lower and compile ahead of time; returns (compiled, seconds)."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - t0


def time_calls(fns: dict[str, Callable[[], Any]], repeats: int = 5,
               warmup: int = 1) -> dict[str, Timing]:
    """Time zero-argument callables, interleaved: warm-up each, then for r in repeats: each
    once, so that drift on a noisy machine hits every peer alike. Repeat r starts at the r-th
    callable (the order rotates), so that none always runs first or after the same one: a call
    can be slower for what ran just before it (after a ~15 s decode, the next ~0.35 s call ran
    30-50 ms slower on the workplace's 2-core machine)."""
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            block(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(t) for name, t in times.items()}


def page_faults(fn: Callable[[], Any], repeats: int = 3) -> Optional[float]:
    """The median count of minor page faults (pages the kernel mapped in on first touch) in one
    call of fn, after a warm-up call; None where the platform does not count them.

    Why: XLA:CPU takes one temporary buffer per call for the whole program, and glibc serves
    one of over 32 MiB as fresh pages from the kernel, each one faulted in when first written:
    a cost per call that the program's own steps do not show."""
    if resource is None:
        return None
    block(fn())
    counts = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block(fn())
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return float(statistics.median(counts))


def time_call(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> Timing:
    return time_calls({"_": fn}, repeats, warmup)["_"]


def measure_matmul_flops(n: int, dtype=jnp.float32, *, repeats: int = 5,
                         warmup: int = 1) -> tuple[Timing, float]:
    """(timing, FLOPs per call) of a jitted n x n x n matmul: the practical FLOP peak of a
    device that has no datasheet figure (a CPU)."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.matmul)
    return time_call(lambda: f(a, b), repeats, warmup), 2.0 * n ** 3
