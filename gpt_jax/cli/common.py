"""Helpers shared by the thin CLIs: boolean and seed flags, one-line errors, signals."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Callable

from gpt_jax.errors import UserError


def str2bool(s: str) -> bool:
    """`true`/`false` (also 1/0, yes/no) for boolean flags."""
    v = str(s).strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def utf8_text(s: str) -> str:
    """A text flag's value (argparse type): refused in one line when the command line held
    bytes that are not UTF-8, which Python keeps as lone surrogates (surrogateescape) and
    which would turn into U+FFFD or fail deep inside (a prompt file in another encoding is
    refused the same way)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        byte = s[e.start].encode("utf-8", "surrogateescape")
        raise argparse.ArgumentTypeError(
            f"not UTF-8 text (byte 0x{byte[0]:02x} at character {e.start}): pass UTF-8 "
            f"text") from None
    return s


MAX_SEED = 2**32 - 1   # jax.random.key keeps 32 bits: a larger seed would repeat a smaller one


def seed(s: str, maximum: int = MAX_SEED) -> int:
    """--seed: an integer in [0, maximum] (train.py passes a lower maximum: see
    train_config.MAX_SEED)."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"seed must be at least 0, got {s}")
    if v > maximum:
        raise argparse.ArgumentTypeError(f"seed must be at most {maximum}, got {s}")
    return v


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """--init_from and --step, as sample.py and eval.py take them (checkpoint.load_model)."""
    p.add_argument("--init_from", default="out",
                   help="a train.py out_dir (default: out), or a gpt2* name / Hugging Face dir")
    p.add_argument("--step", type=int, default=None,
                   help="a train.py out_dir's checkpoint step (default: the latest)")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error: ...` line and exit 1 like every other user
    error (argparse itself prints the usage block and exits 2)."""

    def error(self, message):
        prog = self.prog if self.prog.startswith("python") else f"python {self.prog}"
        raise UserError(f"{message} (see {prog} --help)")


def fail(message: str) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def run(main: Callable[[], int | None]) -> None:
    """Run a CLI entry point: user errors become one `error: ...` line on stderr and exit 1."""
    try:
        sys.exit(main() or 0)
    except UserError as e:
        fail(str(e))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def exit_on_signals(what: str, before_exit: Callable[[], str | None] | None = None) -> None:
    """Ctrl-C (SIGINT) and SIGTERM end this process at once with one line `{what} stopped by
    SIGINT` (or SIGTERM) and exit status 128 + the signal, for a CLI that writes nothing a sudden exit
    could leave half-done (eval.py). Call it from the main thread.

    before_exit: run first, on the watching thread while the main thread goes on (study.py
    writes the report of the runs that ended); what it returns ends the line after a colon.
    Nothing the process writes to stderr after that comes out: the line is the last.

    A Python signal handler only runs when the main thread is between bytecodes: inside an
    XLA compile or a device call it waits, and a KeyboardInterrupt raised within JAX's
    callbacks can be caught there (scoring went on for a minute). Python's C-level handler
    writes the signal's number to the wakeup fd at once; a daemon thread waiting on it
    prints the line and leaves with os._exit, with no interpreter teardown under XLA's
    running threads (that teardown segfaulted). A signal this process inherited as ignored
    (SIGINT in a background job) stays ignored."""
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) != signal.SIG_IGN]
    if not sigs:
        return
    r, w = os.pipe()
    os.set_blocking(w, False)

    def watch():
        signum = os.read(r, 1)[0]
        note = None
        if before_exit is not None:
            try:
                note = before_exit()
            except Exception as e:  # noqa: BLE001 -- leaving regardless, saying so
                note = f"could not save what ran ({type(e).__name__}: {e})".replace("\n", " ")
        try:
            sys.stdout.flush()
        except Exception:  # noqa: BLE001 -- leaving regardless
            pass
        err = os.dup(2)                      # the line goes here; the rest to /dev/null
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        # "\n" first: a progress bar's line ends in "\r", not "\n"
        os.write(err, f"\n{what} stopped by {signal.Signals(signum).name}"
                      f"{f': {note}' if note else ''}\n".encode())
        os._exit(128 + signum)

    threading.Thread(target=watch, name="exit-on-signal", daemon=True).start()
    signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for s in sigs:   # a Python handler, so that the C handler is installed; the thread acts
        signal.signal(s, lambda *_: None)
