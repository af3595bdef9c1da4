"""Paths a run writes to: a writable directory, or one line that says what is wrong."""
from __future__ import annotations

import errno
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


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _blocker(path: str) -> str:
    """The first of path's ancestors (or path) that exists but is not a directory."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts) + 1):
        p = os.sep.join(parts[:i])
        if os.path.lexists(p) and not os.path.isdir(p):
            return p if os.path.isabs(path) else os.path.relpath(p)
    return path


def write_problem(e: OSError, path: str) -> str:
    """What a failed write of `path` means and what to do, by the error's kind (EEXIST /
    ENOTDIR / EISDIR / EROFS / EACCES / EPERM; a full disk or quota is the caller's, which
    knows what to run next): a clause about `path` ("it is ..."), without its full stop."""
    if e.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = _blocker(path)
        return (f"{'it' if blocker == path else blocker} is a file where a directory belongs: "
                f"move it away")
    if e.errno == errno.EISDIR:
        return "it is a directory where a file belongs: move it away"
    if e.errno == errno.EROFS:
        return ("its file system is read-only: make it writable, or copy the run to a "
                "writable disk and pass that --out_dir")
    if e.errno in (errno.EACCES, errno.EPERM):
        return ("this user may not write there: give it write permission, or pass another "
                "--out_dir")
    return "fix that"
