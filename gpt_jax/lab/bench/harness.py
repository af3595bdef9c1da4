"""The bench harness: result rows, the context sections share, the machine's description.

Method (docs/design.md "Bench method"): compile time is measured apart (lower + compile); warm-up
calls are excluded; every timed call ends in block_until_ready; each figure is the median of
several repeats with min and max; A/B peers are interleaved repeat by repeat so that drift in a
noisy machine hits both alike (gpt_jax/utils/timing.py). The machine section measures the FLOP peak
(large matmul) and the read bandwidth (read-only reduction over >= 1 GiB) in the same run, so MFU
and bandwidth fractions are stated against figures from this very machine.
"""
from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from gpt_jax.model.config import GPTConfig
from gpt_jax.utils.timing import Timing


@dataclass
class Result:
    section: str
    name: str
    metric: str
    value: float
    unit: str
    config: dict = field(default_factory=dict)
    median: Optional[float] = None   # seconds per call (None for derived rows such as ratios)
    min: Optional[float] = None
    max: Optional[float] = None
    repeats: int = 0
    compile_s: Optional[float] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def result_from_timing(section: str, name: str, timing: Timing, *, work: float, metric: str,
                       unit: str, config: Optional[dict] = None,
                       compile_s: Optional[float] = None) -> Result:
    """A throughput row: value = work / median seconds (e.g. tokens per call -> tokens/s)."""
    return Result(section=section, name=name, metric=metric, value=work / timing.median,
                  unit=unit, config=config or {}, median=timing.median, min=timing.min,
                  max=timing.max, repeats=len(timing.times), compile_s=compile_s)


def ratio_row(section: str, name: str, ours: Result, theirs: Result,
              config: Optional[dict] = None) -> Result:
    return Result(section=section, name=name, metric=f"{ours.metric} ratio", unit="x",
                  value=ours.value / theirs.value, config=config or {}, repeats=ours.repeats)


def peak_memory_bytes(compiled) -> Optional[int]:
    """Peak device memory of one compiled program, XLA's static estimate (arguments + outputs
    + temporaries - aliased). The allocator's own peak (device_memory() on a GPU) is the
    whole process's high-water mark, not one program's: a suite reports it once, at the end."""
    try:
        m = compiled.memory_analysis()
        if m is None:
            return None
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # not every backend implements it
        return None


def device_memory() -> Optional[dict]:
    """The first device's allocator figures (bytes_limit, bytes_in_use, peak_bytes_in_use)
    where it keeps them (GPUs, TPUs); None on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    keys = ("bytes_limit", "bytes_in_use", "peak_bytes_in_use")
    return {k: int(stats[k]) for k in keys if k in stats} or None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import jaxlib
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "device_memory_limit": (device_memory() or {}).get("bytes_limit")}


@dataclass
class Context:
    """What sections share: CLI options and the machine figures measured at the start."""
    repeats: int = 5
    warmup: int = 1
    preset: str = "gpt2"
    batch_size: int = 8
    seq_len: Optional[int] = None       # forward section; None: the model's block_size
    dtype: str = "float32"
    tiny: bool = False                  # smoke-test sizes
    peak_flops: Optional[float] = None  # FLOP/s, from the matmul in the machine section
    peak_flops_bf16: Optional[float] = None  # the same in bfloat16 (measured on accelerators)
    options: dict = field(default_factory=dict)

    def config(self, **overrides) -> GPTConfig:
        return GPTConfig.from_preset(self.preset, dtype=self.dtype, **overrides)

    def model(self) -> tuple[str, GPTConfig]:
        """(name, config) of the model the forward and decode sections run."""
        if self.tiny:
            return "gpt2-tiny", GPTConfig.from_preset("gpt2-tiny", vocab_size=512,
                                                      dtype=self.dtype)
        return self.preset, self.config()


def read_probe(ctx: Context) -> tuple[Callable[[], Any], float]:
    """(fn, bytes): a read-only reduction over >= 1 GiB (64 MiB with --tiny), where every byte
    is read once and almost nothing is written: the floor that a memory-bound decode step
    (reading all weights per token) can approach."""
    nbytes = (64 << 20) if ctx.tiny else (1 << 30) if jax.default_backend() == "cpu" else (4 << 30)
    x = jnp.ones((nbytes // 4,), jnp.float32)
    f = jax.jit(jnp.sum)
    return (lambda: f(x)), float(x.nbytes)
