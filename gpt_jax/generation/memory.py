"""How much memory a decode needs and how much there is: generate() and beam search refuse,
before anything is allocated, a call whose KV cache and logits would not fit (one
DecodeMemoryError line naming the largest batch that does); scoring and bench.py read the same
free-memory figure."""
from __future__ import annotations

import math
import os
from typing import Optional

import jax
import numpy as np

from gpt_jax.model.config import GPTConfig
from gpt_jax.errors import DecodeMemoryError

# Refuse a decode whose estimate exceeds this fraction of the memory free: the estimate counts
# the large buffers only, and XLA's temporaries and the host's other work need room too.
MEMORY_FRACTION = 0.75
MEMORY_CHECK_ABOVE = 256 << 20  # smaller decodes skip the check (no /proc read per call)


def decode_memory_bytes(cfg: GPTConfig, batch: int, prompt_len: int, max_new_tokens: int,
                        return_logits: bool = False) -> int:
    """Bytes one generate() call allocates beyond the weights (its large buffers: a lower
    bound of the peak), for `batch` prompts left-padded to prompt_len."""
    B, P, N = batch, prompt_len, max_new_tokens
    S = P + N - 1
    C, H, V = cfg.n_embd, cfg.n_head, cfg.vocab_size
    item = np.dtype(cfg.compute_dtype).itemsize
    cache = 2 * cfg.n_layer * B * S * C * item    # k and v of every layer
    # Twice: the prefill's padded cache and the loop's carry can both be live where XLA does
    # not alias them (a bound kept on the safe side).
    total = 2 * cache
    total += B * P * 4 * C * item + 2 * B * H * P * S * 4   # prefill: MLP hidden, scores, probs
    total += 6 * B * V * 4                        # one step's logits and the filters' temporaries
    total += B * (P + N) * 4                      # prompts in, tokens out
    if return_logits:
        total += 2 * B * N * V * 4                # the stacked logits, then their concatenation
    return total


def available_memory_bytes() -> Optional[int]:
    """Bytes free for a decode: on an accelerator its allocator's limit less what is in use;
    on CPU the kernel's MemAvailable (psutil, or free pages, where /proc is absent).
    None when unknown."""
    dev = jax.local_devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def max_batch(cfg: GPTConfig, prompt_len: int, max_new_tokens: int,
              return_logits: bool = False, split: int = 1, stop=None) -> Optional[int]:
    """The most prompts of (bucketed) length prompt_len one call can decode within
    MEMORY_FRACTION of the memory available (None when that is unknown); stop: the call's
    StopTables, whose tables and per-row matching count too."""
    free = available_memory_bytes()
    if free is None:
        return None
    fixed, stop_row = stop_bytes(stop)
    per_row = decode_memory_bytes(cfg, 1, prompt_len, max_new_tokens, return_logits) + stop_row
    return max(int(MEMORY_FRACTION * free) - fixed, 0) // per_row * split


# -- stop strings' tables (generation/stopping.py) ---------------------------------------------

def stop_table_bytes(vocab_size: int, n_stops: int, positions: int, ends: int) -> int:
    """Bytes of the stop tables (stopping.StopTables): int32 (V+1, S, P) positions and
    (V+1, S, E) end lengths, and (V+1,) token lengths."""
    return (vocab_size + 1) * (n_stops * (positions + ends) + 1) * 4


def stop_match_bytes(window: int, n_stops: int, positions: int, ends: int) -> int:
    """Bytes one row's stop match (stopping.stop_matched) holds per step: the window's
    positions gathered, int32 (M-1, S, P), compared with each end (P x E bools), and the
    running sums (M, S, E), a few int32 arrays of them."""
    M, S, P, E = window, n_stops, positions, ends
    return (M - 1) * S * P * (4 + E) + 4 * M * S * E * 4


def stop_bytes(stop) -> tuple[int, int]:
    """(the tables' bytes, one row's matching bytes) of a call's StopTables (None: none)."""
    if stop is None:
        return 0, 0
    V1, S, P = stop.positions.shape
    E = stop.ends.shape[2]
    return (stop_table_bytes(V1 - 1, S, P, E),
            stop_match_bytes(int(stop.targets.max()), S, P, E))


MAX_SAMPLE_BATCH = 64  # sample.py's samples decoded at once by default (fewer where fewer fit)


def plan_batches(cfg: GPTConfig, num_samples: int, prompt_len: int, max_new_tokens: int,
                 batch_size: Optional[int] = None, stop=None) -> tuple[int, int]:
    """How to decode num_samples samples of one prompt in bounded memory.

    Args:
      cfg: the model's config.
      num_samples: samples wanted (>= 1).
      prompt_len: the bucketed prompt length (prompts.bucket_length).
      max_new_tokens: new tokens per sample.
      batch_size: the most rows per call (default: MAX_SAMPLE_BATCH, capped by what fits in
        memory, see max_batch).
      stop: the StopTables of the calls' stop strings (their matching takes memory per row).

    Returns:
      (batch, n_batches): n_batches calls of `batch` rows each, all of one shape so that one
      compiled program serves them all (the last call's spare rows are dropped).
    """
    fit = max_batch(cfg, prompt_len, max_new_tokens, stop=stop)
    cap = batch_size or min(MAX_SAMPLE_BATCH, MAX_SAMPLE_BATCH if fit is None else max(fit, 1))
    n_batches = math.ceil(num_samples / cap)
    return math.ceil(num_samples / n_batches), n_batches


def check_memory(cfg: GPTConfig, batch: Optional[int], prompt_len: int, max_new_tokens: int,
                 return_logits: bool = False, split: int = 1, *, num_beams: int = 1,
                 stop=None) -> None:
    """Refuse, before any allocation, a decode whose KV cache and logits would not fit.
    batch: the rows (prompts x num_beams for beam search); split: devices the rows are spread
    over where they divide (each holds batch / split); stop: the call's StopTables.

    The message leads with what to change: too many prompts (the largest count that fits),
    too many beams (the largest num_beams that fits), or, when not even one row fits, fewer
    tokens, shorter stop strings or a smaller model."""
    if not batch:
        return
    rows = batch // split if batch % split == 0 else batch   # as generate_args places them
    fixed, stop_row = stop_bytes(stop)
    need = decode_memory_bytes(cfg, rows, prompt_len, max_new_tokens, return_logits) + \
        fixed + rows * stop_row
    if need < MEMORY_CHECK_ABOVE:
        return
    free = available_memory_bytes()
    if free is None or need <= MEMORY_FRACTION * free:
        return
    fit = max_batch(cfg, prompt_len, max_new_tokens, return_logits, split, stop) or 0
    S = prompt_len + max_new_tokens - 1
    what = (f"KV cache and logits{', return_logits' if return_logits else ''}"
            f"{', stop strings' if stop is not None else ''}")
    room = (f"{format_gib(free)} is available, of which at most {MEMORY_FRACTION:.0%} is used, "
            f"and the {what} would need about {format_gib(need)}")
    prompts = batch // num_beams
    if num_beams > 1 and fit // prompts >= 2:
        raise DecodeMemoryError(
            f"num_beams={num_beams} is more beams than fit in memory for {prompts:,} "
            f"prompt{'s' if prompts > 1 else ''} of up to {S} positions: at most "
            f"{fit // prompts:,} fit ({room}): pass num_beams={fit // prompts} or fewer")
    if fit >= num_beams:
        raise DecodeMemoryError(
            f"{prompts:,} prompts are more than one call can decode here: at most "
            f"{fit // num_beams:,} of up to {S} positions"
            f"{f' with {num_beams} beams each' if num_beams > 1 else ''} fit ({room}): "
            f"split the prompts into calls of at most {fit // num_beams}")
    todo = "ask for fewer tokens (max_new_tokens)"
    if stop is not None:
        todo += ", use shorter stop strings"
    raise DecodeMemoryError(
        f"generate() would need about {format_gib(need)} for {batch:,} "
        f"{'row' if num_beams > 1 else 'prompt'}{'s' if batch > 1 else ''} x {S} positions "
        f"({what}) but "
        f"{format_gib(free)} is available (at most {MEMORY_FRACTION:.0%} of it is used), not "
        f"enough for one prompt{' with 2 beams' if num_beams > 1 else ''}: {todo} or use a "
        f"smaller model")


def format_gib(n: float) -> str:
    """Bytes as "1.5 GiB" (or MiB below one GiB)."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"
