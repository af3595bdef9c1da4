"""Orbax failing in one line: what a failed save or restore leaves behind, finished before the
caller reports it, so that nothing prints after (or around) the one `error:` line.

Why there is noise at all: orbax runs each restore in a fresh asyncio event loop
(asyncio_utils.run_sync) and closes that loop as soon as the first array read fails, while the
other reads (TensorStore futures, threads) are still in flight. Each of those then fails later,
at a moment set by the disk: TensorStore's thread prints "RuntimeError: Event loop is closed",
and the abandoned coroutines print "Exception ignored in: <coroutine ...>" with a TensorStore
spec dump when they are collected (often at interpreter exit), hence 0 to 1,000 lines after
the error, "intermittently". A failed save logs one ERROR traceback per writer thread.

The fixes, at the cause: event loops created during an orbax call finish their own pending
tasks before they close (`draining_loops`), so every abandoned read completes on a running
loop and its exception is retrieved; a failed save's ERROR records are held back and its
writer threads joined (`errors_held`, `join_new_threads`).
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import threading
import warnings

DRAIN_TIMEOUT_S = 60.0   # an abandoned read of a local file ends in milliseconds


class _DrainingLoop(asyncio.SelectorEventLoop):
    """An event loop that, when closed, first lets its pending tasks finish (as asyncio.run
    does, without cancelling them: a cancelled orbax read raises another exception in its
    `except BaseException`) and retrieves their exceptions."""

    def close(self):
        if not self.is_closed() and not self.is_running():
            pending = asyncio.all_tasks(self)
            if pending:
                done, _ = self.run_until_complete(asyncio.wait(pending,
                                                               timeout=DRAIN_TIMEOUT_S))
                for task in done:
                    if not task.cancelled():
                        task.exception()   # retrieved: no "exception was never retrieved"
        super().close()


class _DrainingPolicy(asyncio.DefaultEventLoopPolicy):
    _loop_factory = _DrainingLoop


@contextlib.contextmanager
def draining_loops():
    """While inside, asyncio.new_event_loop() (which orbax calls per restore) makes loops that
    finish their pending tasks before closing. Process-wide while it lasts: a loop another
    thread makes meanwhile only differs in that it, too, finishes its tasks."""
    if sys.platform == "win32":   # the selector loop is not the default there
        yield
        return
    with warnings.catch_warnings():   # the policy API is deprecated from Python 3.14
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(_DrainingPolicy())
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(previous)


@contextlib.contextmanager
def errors_held(logger_name: str = "absl"):
    """Hold back the ERROR records (with tracebacks, one per failed thread) that orbax logs
    while a save fails: the caller reports the failure in one line. Re-emitted if the save
    went through after all."""
    held: list[logging.LogRecord] = []

    class Hold(logging.Filter):
        def filter(self, record):
            if record.levelno >= logging.ERROR:
                held.append(record)
                return False
            return True

    logger, hold = logging.getLogger(logger_name), Hold()
    logger.addFilter(hold)
    try:
        yield
    except BaseException:
        held.clear()
        raise
    finally:
        logger.removeFilter(hold)
        for record in held:
            logger.handle(record)


def join_new_threads(before: set, timeout: float = 60.0) -> None:
    """Wait for the threads a failed call started (orbax's writers), so that none of them
    writes into a directory after it is removed, or prints after the error."""
    for t in threading.enumerate():
        if t not in before and t is not threading.current_thread():
            try:
                t.join(timeout)
            except Exception:  # noqa: BLE001 - orbax's threads re-raise their failure on
                pass           # join: the caller is already reporting that failure


def collect_quietly() -> None:
    """Finalise now, without their "Exception ignored in ..." dumps of TensorStore specs, any
    coroutines a failed restore left (the failure is reported in one line)."""
    hook = sys.unraisablehook
    sys.unraisablehook = lambda *_: None
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook
