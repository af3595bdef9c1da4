"""One run per out_dir: a train.py run (or save_checkpoint) holds `out_dir/run.lock` while it
writes there, so a second run on the same directory stops with one line naming the holder
instead of interleaving checkpoints and metrics.jsonl rows with it.

How: fcntl.flock on the lock file, plus one JSON line in it saying who holds it
({"pid", "host", "since", "command"}). The OS releases a flock when its process dies, however
it dies (SIGKILL, a power cut of one host aside), so staleness never needs guessing from pids:
a lock file whose flock can be taken is stale by definition; its JSON line then tells who left
it, and taking it over says so. The file is removed on release (and held until then). The
`filelock` package wraps the same flock call but records no holder, so it could not name one.
Platforms without fcntl (Windows) run without the lock.
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import stat
import sys
from typing import Callable, Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from gpt_jax.errors import UserError

LOCK_FILE = "run.lock"


class LockedError(UserError):
    """out_dir is held by another run."""


class LockFileError(UserError):
    """out_dir/run.lock is not a file this process can lock: a directory, a symbolic link,
    another kind of file, or one it may not open."""


# O_NOFOLLOW: a lock path that is a symbolic link fails to open (ELOOP) instead of writing the
# holder's line into whatever the link points at; O_NONBLOCK: a FIFO put there does not hang
# the open (it is then refused as not a regular file).
OPEN_FLAGS = (os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
              | getattr(os, "O_NONBLOCK", 0))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _not_a_lock(path: str, out_dir: str, what: str) -> LockFileError:
    if what.startswith("a symbolic link"):
        todo = f"remove the link (rm {path}; what it points to is left as it is)"
    elif what == "a directory":
        todo = "move it away"
    else:
        todo = f"remove it (rm {path})"
    return LockFileError(f"{path} is {what}, where --out_dir {out_dir} keeps its run lock, "
                         f"which must be a plain file (train.py never writes through a link): "
                         f"{todo} or pass another --out_dir")


def open_lock_file(path: str, out_dir: str) -> int:
    """The lock file's descriptor, opened read-write without following a link; a
    LockFileError naming the file and what to do when it is a directory, a link, a FIFO, a
    socket, a device, or a file this user may not open."""
    try:
        fd = os.open(path, OPEN_FLAGS, 0o644)
    except OSError as e:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = None
        if e.errno == errno.ELOOP or (mode is not None and stat.S_ISLNK(mode)):
            try:
                what = f"a symbolic link to {os.readlink(path)}"
            except OSError:
                what = "a symbolic link"
            raise _not_a_lock(path, out_dir, what) from None
        if e.errno == errno.EISDIR or (mode is not None and stat.S_ISDIR(mode)):
            raise _not_a_lock(path, out_dir, "a directory") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise LockFileError(
                f"cannot open {path}, the run lock of --out_dir {out_dir} ({e.strerror}): if "
                f"another user's run holds it, pass another --out_dir; otherwise make it "
                f"readable and writable for this user (chmod u+rw {path}) or remove it") from None
        raise LockFileError(f"cannot open {path}, the run lock of --out_dir {out_dir} "
                            f"({e.strerror or e}): fix it or pass another --out_dir") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_a_lock(path, out_dir, _kind(mode))
    os.set_blocking(fd, True)
    return fd


def lock_path(out_dir: str) -> str:
    return os.path.join(out_dir, LOCK_FILE)


def _read_holder(fd: int) -> Optional[dict]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 65536).decode("utf-8", "replace").strip()
        holder = json.loads(raw) if raw else None
        return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
        return None


def describe(holder: Optional[dict]) -> str:
    """'pid 123 on host h since 2026-12-06 20:10:00 UTC: python train.py ...'."""
    if not holder:
        return "a run that has not written its details yet"
    text = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since "
            f"{holder.get('since', '?')}")
    command = str(holder.get("command", "")).strip()
    return text + (f" ({command[:120]}{' ...' if len(command) > 120 else ''})"
                   if command else "")


class RunLock:
    """The lock on one out_dir; acquire() or raise LockedError; release() (idempotent)."""

    def __init__(self, out_dir: str, *, log: Callable = print):
        self.out_dir, self.path, self.log = out_dir, lock_path(out_dir), log
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        if fcntl is None or self.fd is not None:
            return self
        while True:
            fd = open_lock_file(self.path, self.out_dir)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise LockedError(
                    f"{self.out_dir} is in use by another run: {describe(holder)}. Wait for it "
                    f"to finish (or stop it), or pass another --out_dir; the lock is "
                    f"{self.path}") from None
            except OSError:
                os.close(fd)
                raise
            # A holder that released between our open and flock removed the file we locked:
            # lock the file now at the path instead (lstat: a link put there since is not it).
            try:
                st, mine = os.lstat(self.path), os.fstat(fd)
                same = (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = _read_holder(fd)
        if left:
            self.log(f"{self.path}: taking over the lock left by {describe(left)}, which ended "
                     f"without releasing it")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now(datetime.timezone.utc).strftime(
                  "%Y-%m-%d %H:%M:%S UTC"),
              "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(me) + "\n").encode())
            os.fsync(fd)
        except OSError:   # a full disk: the flock alone still holds out_dir
            pass
        self.fd = fd
        return self

    def release(self) -> None:
        """Remove the file while still holding it (a waiting run then locks a fresh file),
        then unlock."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def hold_out_dir(out_dir: str, *, writes: bool = True, log: Callable = print) -> RunLock:
    """A run's lock on out_dir, taken by process 0 only (the others write their checkpoint
    shards under it); every process stops with the same error when it is held. A run that
    writes nothing (eval-only) takes none, nor does one whose out_dir is missing (a resume:
    the restore says so)."""
    import jax
    import numpy as np
    lock, error, kind = RunLock(out_dir, log=log), None, LockedError
    if jax.process_index() == 0 and writes and os.path.isdir(out_dir):
        try:
            lock.acquire()
        except (LockedError, LockFileError) as e:
            error, kind = str(e), type(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        held = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if int(held) and error is None:
            error = f"{out_dir} is in use by another run (process 0 could not lock it)"
    if error is not None:
        raise kind(error)
    return lock
