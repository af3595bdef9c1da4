"""A command run as a real process and stopped by a real signal: the Ctrl-C tests of eval.py,
sample.py, study.py and the analysis."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

from conftest import ROOT


class Watched:
    """`python ARGS...` from the repository root, its stdout and stderr collected (bytes) as they
    come. The child starts with SIGINT at its default: one started from a background job of a
    non-interactive shell (as CI may run this) inherits SIGINT ignored, and the CLIs rightly keep
    ignoring it then. Use it as a context manager: the process is killed on the way out."""

    def __init__(self, *args, env=None):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1",
               "PYTHONUNBUFFERED": "1", **(env or {})}
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.proc = subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        finally:
            signal.signal(signal.SIGINT, previous)
        self.out, self.err = bytearray(), bytearray()
        self.readers = [threading.Thread(target=self.collect, args=(stream, buf))
                        for stream, buf in ((self.proc.stdout, self.out),
                                            (self.proc.stderr, self.err))]
        for r in self.readers:
            r.start()

    @staticmethod
    def collect(stream, buf):
        for chunk in iter(lambda: stream.read1(4096), b""):
            buf.extend(chunk)

    def wait_for(self, ready, timeout=240):
        """Until ready(self) holds; the process must still run meanwhile."""
        deadline = time.monotonic() + timeout
        while not ready(self):
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                self.err.decode()[-2000:]
            time.sleep(0.05)

    def stop(self, sig=signal.SIGINT, timeout=60) -> float:
        """Send sig: the seconds until the process ended."""
        self.proc.send_signal(sig)
        t0 = time.monotonic()
        self.proc.wait(timeout=timeout)
        return time.monotonic() - t0

    def lines(self, start=0) -> list[str]:
        """stderr's non-empty lines from byte `start` (a progress bar's "\\r" ends a line)."""
        return [l for l in re.split(r"[\r\n]", self.err[start:].decode()) if l.strip()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        for r in self.readers:
            r.join()
