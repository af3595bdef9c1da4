"""FLOPs per token and the peak FLOP/s a run is measured against: MFU = tokens/s * FLOPs per
token / peak."""
from __future__ import annotations

import functools
from typing import Optional

import jax

from gpt_jax.model.config import GPTConfig
from gpt_jax.utils.timing import measure_matmul_flops

# Dense bf16 peak FLOP/s per chip by device_kind substring (vendor datasheets, no sparsity).
# The first key found in device_kind wins, so variants come before their family: "H100 PCIe"
# (756) and "H100 NVL" (835) before "H100" (the SXM part, 989); "L40S" before "L40" before
# "L4". GH200's GPU is an H100 SXM, and its device_kind holds "H200": the same 989.
PEAK_FLOPS = {"H200 NVL": 835e12, "H200": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12,
              "H100": 989e12, "B200": 2250e12, "A100": 312e12, "A10G": 125e12,
              "L40S": 362e12, "L40": 181e12, "L4": 121e12, "V100": 125e12,
              "RTX 4090": 165e12, "RTX 3090": 71e12,
              "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5": 197e12, "TPU v4": 275e12}


def datasheet_flops(device_kind: str) -> Optional[float]:
    """One chip's dense bf16 FLOP/s from PEAK_FLOPS (None for a device the table lacks, such
    as any CPU): the peak that MFU is quoted against (docs/design.md)."""
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in device_kind.lower():
            return flops
    return None


def flops_per_token(cfg: GPTConfig, seq_len: int, n_params_no_wpe: int) -> float:
    """Training FLOPs per token (docs/design.md): 6N + 12 * L * n_embd * T (N excludes wpe):
    forward + backward of every weight, plus attention's scores and weighted sum."""
    return 6 * n_params_no_wpe + 12 * cfg.n_layer * cfg.n_embd * seq_len


@functools.lru_cache(maxsize=1)
def peak_flops() -> tuple[float, str]:
    """(FLOP/s, where it comes from): the datasheet table for known accelerators, else a
    timed float32 matmul on this machine (CPUs: XLA's matmul speed is the practical peak)."""
    kind = jax.devices()[0].device_kind
    flops = datasheet_flops(kind)
    if flops is not None:
        return flops * jax.device_count(), f"{kind} datasheet"
    timing, work = measure_matmul_flops(2048, repeats=3, warmup=1)
    # the fastest repeat: a busy machine slows some repeats, never speeds one up
    return work / timing.min * jax.device_count(), f"measured 2048^3 matmul on {kind}"
