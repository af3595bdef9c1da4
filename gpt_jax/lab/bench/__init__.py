"""The benchmarks behind bench.py: one module per section, the harness (harness.py: result
rows, the shared context; the method is in its docstring), the report (report.py: table, JSON,
chart) and the Hugging Face PyTorch peers (peers.py).

SECTIONS: name -> run(ctx) -> list[Result], in the order bench.py runs them.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

from gpt_jax.lab.bench import (cache, decoding, evaluation, forward, machine, scale,
                               serving, speculative, training)
from gpt_jax.lab.bench.harness import Context, Result
from gpt_jax.errors import UserError

SECTIONS: dict[str, Callable[[Context], list[Result]]] = {
    "machine": machine.run,
    "forward": forward.run,
    "train": training.run,
    "decode": decoding.run,
    "cache": cache.run,       # the decode cache grown in segments vs one whole cache (cache.py)
    "speculative": speculative.run,   # prompt lookup and a draft model (speculative.py)
    "scale": scale.run,
    "eval": evaluation.run,
    "serve": serving.run,   # beam search, TTFT/TPOT (serving.py); streamed vs unstreamed
                            # greedy, early exit (streaming.py)
}


def run_sections(ctx: Context, names: list[str], log=print) -> list[Result]:
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise UserError(f"unknown bench section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if "machine" not in names and ctx.peak_flops is None:
        names = ["machine"] + names  # MFU and bandwidth fractions need this run's figures
    results: list[Result] = []
    for name in names:
        log(f"[bench] section {name} ...", file=sys.stderr)
        t0 = time.perf_counter()
        results += SECTIONS[name](ctx)
        log(f"[bench] section {name} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return results
