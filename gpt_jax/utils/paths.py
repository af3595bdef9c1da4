"""Paths a run writes to: a writable directory, or one line that says what is wrong."""
from __future__ import annotations

import os
import tempfile

from gpt_jax.errors import UserError


def writable_dir(path: str, flag: str = "--out_dir", *, create: bool = True,
                 probe: bool = True) -> str:
    """path as a directory this process can write into, or a one-line UserError naming the
    flag: a file in the way, a missing parent, no permission, a read-only file system.
    create: make it when missing (else a missing path is left to the caller). probe: check
    an existing directory by writing a temporary file, which also catches what os.access
    cannot (root, read-only mounts)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag} {path} is a file, not a directory: pass a directory")
    if not os.path.isdir(path) and not create:
        return path
    try:
        os.makedirs(path, exist_ok=True)
        if probe:
            with tempfile.TemporaryFile(dir=path):
                pass
    except OSError as e:
        raise UserError(f"{flag} {path} is not a writable directory ({e.strerror or e}): "
                        f"pass another {flag}") from None
    return path
