"""--profile_steps START:END: a jax.profiler trace of the updates that take the run from step
START to step END, written to out_dir/profile (out_dir/profile/process_I when several
processes run). TensorBoard shows it (`pip install tensorboard-plugin-profile`, then
`tensorboard --logdir out_dir/profile`); Perfetto (ui.perfetto.dev) opens the
perfetto_trace.json.gz beside it.

    prof = StepProfiler("10:15", out_dir)
    prof.before(step)    # before the update from `step`: starts the trace at START
    prof.after(step)     # after the update reaching `step` (synced): stops it at END
    prof.close()         # stops a trace that is still running (an error, a signal)
"""
from __future__ import annotations

import os
import tempfile
from typing import Optional

import jax

from gpt_jax.errors import ConfigError, UserError

PROFILE_DIR = "profile"


def parse_profile_steps(spec: str, max_iters: Optional[int] = None) -> Optional[tuple[int, int]]:
    """'' -> None (off); 'START:END' -> (START, END) with 0 <= START < END (<= max_iters)."""
    if not isinstance(spec, str):
        raise ConfigError(f"profile_steps must be a string START:END such as 10:15, got {spec!r}")
    if not spec.strip():
        return None
    parts = spec.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, end = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"profile_steps must be START:END (steps, e.g. 10:15 traces the "
                          f"updates from step 10 to step 15), got {spec!r}") from None
    if not 0 <= start < end:
        raise ConfigError(f"profile_steps {spec}: the window must be non-negative steps "
                          f"START:END with 0 <= START < END, e.g. 10:15")
    if max_iters is not None and end > max_iters:
        raise ConfigError(f"profile_steps {spec} ends after max_iters ({max_iters}): pass an "
                          f"END of at most {max_iters}")
    return start, end


def profile_dir(out_dir: str) -> str:
    d = os.path.join(out_dir, PROFILE_DIR)
    return d if jax.process_count() == 1 else os.path.join(d, f"process_{jax.process_index()}")


def trace_error(where: str, e: Exception) -> UserError:
    msg = " ".join(str(e).split())
    return UserError(f"--profile_steps: jax.profiler could not write its trace in {where} "
                     f"({type(e).__name__}: {msg[:300]}); check that directory, or drop "
                     f"--profile_steps")


class StepProfiler:
    """Starts and stops one jax.profiler trace around the updates START+1..END; a run that
    resumes inside the window traces the rest of it, one past it traces nothing. The trace's
    directory is made and tried with a file when the run starts (start: its first step), so a
    file in its way or a directory this user may not write is an OSError before any
    training, not a failed trace at END."""

    def __init__(self, spec: str, out_dir: str, start: int = 0):
        self.window = parse_profile_steps(spec)
        self.dir = profile_dir(out_dir)
        self.active = False
        self._step_ann = None
        if self.window is not None and self.window[1] > start:
            os.makedirs(self.dir, exist_ok=True)
            try:
                with tempfile.TemporaryFile(dir=self.dir):
                    pass
            except OSError as e:   # named by the directory, not the probe's random name
                raise OSError(e.errno, e.strerror, self.dir) from None

    def before(self, step: int) -> None:
        """Before the update from `step` to step + 1."""
        if self.window is None:
            return
        start, end = self.window
        if not self.active and start <= step < end:
            try:
                jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
            except Exception as e:  # noqa: BLE001 - XLA's errors: one line
                raise trace_error(self.dir, e) from None
            self.active = True
        if self.active:   # TensorBoard's profile plugin groups the trace by these steps
            self._step_ann = jax.profiler.StepTraceAnnotation("train", step_num=step)
            self._step_ann.__enter__()

    def after(self, step: int) -> None:
        """After the update that reached `step`, once its results are on the host."""
        if self._step_ann is not None:
            self._step_ann.__exit__(None, None, None)
            self._step_ann = None
        if self.active and step >= self.window[1]:
            self.close()

    def close(self, quiet: bool = False) -> None:
        """quiet: after an error, which is the one to see."""
        try:
            if self._step_ann is not None:
                self._step_ann, ann = None, self._step_ann
                ann.__exit__(None, None, None)
            if self.active:
                self.active = False
                jax.profiler.stop_trace()
        except Exception as e:  # noqa: BLE001
            if not quiet:
                raise trace_error(self.dir, e) from None
