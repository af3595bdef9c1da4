"""Helpers shared by the thin CLIs: boolean flags, one-line errors."""
from __future__ import annotations

import argparse
import sys
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error: ...` line and exit 1 like every other user
    error (argparse itself prints the usage block and exits 2)."""

    def error(self, message):
        raise UserError(f"{message} (see python {self.prog} --help)")


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
