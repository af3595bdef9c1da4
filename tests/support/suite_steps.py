"""Steps for tests/lab/test_bench.py's suite tests, run by gpt_jax.lab.bench.suite in child processes
(named "suite_steps:NAME"; the tests put this directory on the children's PYTHONPATH)."""
import time

from gpt_jax.lab.bench.harness import Result


def broken(ctx):
    raise RuntimeError("this step is broken on purpose")


def sleepy(ctx):
    time.sleep(600)
    return []


def measures(ctx):
    """Sets a peak, as the machine section does, for the steps after it."""
    ctx.peak_flops = 123.0
    return [Result("fake", "measures", "value", 1.0, "x", {"option": ctx.options.get("a")})]


def reads(ctx):
    """What this process was handed: the peak from an earlier step, options, sizes."""
    return [Result("fake", "reads", "peak", ctx.peak_flops, "FLOP/s",
                   {"options": ctx.options, "tiny": ctx.tiny, "dtype": ctx.dtype})]
