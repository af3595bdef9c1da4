"""The Hugging Face Flax GPT-2 peer of the train section: FlaxGPT2LMHeadModule + optax AdamW,
the JAX model users had before this one. It lives only in transformers < 5, which this package
does not install, so it runs in a separate process under the Python of a side environment
(bench.py --flax_python; README "Benchmarks" says how to make one) through flax_worker.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from gpt_jax.checkpoint.hf import to_hf
from gpt_jax.errors import UserError

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flax_worker.py")
NOTE = ("[bench] train: HF Flax peer skipped: pass --flax_python PATH, the python of an "
        "environment with transformers<5 and flax (docs/benchmarks.md)")
_MARK = "gpt_jax-flax-probe"
_PROBE = (f"print({_MARK!r}, flush=True); "
          "import transformers, flax, optax, safetensors; "
          "from transformers.models.gpt2.modeling_flax_gpt2 import FlaxGPT2LMHeadModule; "
          "print(transformers.__version__)")


def check_flax_python(path: str) -> None:
    """One-line error, before anything is timed, when `path` cannot run the worker."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise UserError(f"--flax_python {path}: not an executable file; give the python of an "
                        f"environment with transformers<5 and flax (docs/benchmarks.md)")
    try:   # a Python prints its marker before any import can fail
        proc = subprocess.run([path, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"--flax_python {path} could not be run ({e}): give the python of an "
                        f"environment with transformers<5 and flax (docs/benchmarks.md)") from None
    if not proc.stdout.startswith(_MARK):
        raise UserError(f"--flax_python {path} is not a Python interpreter: give the python of "
                        f"an environment with transformers<5 and flax, e.g. "
                        f"/path/to/venv/bin/python (docs/benchmarks.md)")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"--flax_python {path} cannot import HF Flax GPT-2 ({last}): install "
                        f"transformers<5, flax, optax and safetensors there (docs/benchmarks.md)")


class FlaxPeer:
    """One worker process holding HF Flax's compiled step on our weights and batches.
    peer() runs one step and returns its loss; peer.cpu_seconds lists each step's CPU time in
    the worker; peer.loss0 is its first step's loss (on batches[0], before any update)."""

    def __init__(self, python: str, params, cfg, tc, batches: np.ndarray):
        self._dir = tempfile.TemporaryDirectory(prefix="gpt_jax-flax-peer-")
        hf_dir = to_hf(params, cfg, os.path.join(self._dir.name, "hf"))
        batches_path = os.path.join(self._dir.name, "batches.npy")
        np.save(batches_path, np.asarray(batches, np.int32))     # (N, B, T + 1)
        # stderr straight to ours: the worker's tracebacks and warnings stay visible
        self._proc = subprocess.Popen([python, WORKER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        train = {k: getattr(tc, k) for k in ("learning_rate", "min_lr", "warmup_iters",
                                             "lr_decay_iters", "weight_decay", "beta1",
                                             "beta2", "grad_clip")}
        r = self._ask({"cmd": "setup", "hf_dir": hf_dir, "batches": batches_path,
                       "train": train})
        self.compile_s, self.loss0 = r["compile_s"], r["loss0"]
        self.cpu_seconds: list[float] = []

    def _ask(self, request: dict) -> dict:
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"HF Flax worker exited ({self._proc.wait()}); see its stderr")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(f"HF Flax worker: {answer['error']}")
        return answer

    def __call__(self) -> float:
        r = self._ask({"cmd": "step"})
        self.cpu_seconds.append(r["cpu_seconds"])
        return r["loss"]

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._ask({"cmd": "quit"})
            except (RuntimeError, OSError):
                pass
            self._proc.wait(timeout=60)
        self._dir.cleanup()
