"""Helpers with no model knowledge: timing (Timing, time_calls, compile_seconds) and paths
(writable_dir)."""
from gpt_jax.utils.paths import writable_dir
from gpt_jax.utils.timing import Timing, compile_seconds, time_call, time_calls

__all__ = ["Timing", "compile_seconds", "time_call", "time_calls", "writable_dir"]
