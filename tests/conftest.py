import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture
def tiny_cfg():
    from gpt_jax import GPTConfig
    return GPTConfig.from_preset("gpt2-tiny", vocab_size=256, block_size=32)


def run_cli(args, cwd=ROOT, env=None, timeout=300):
    """Run a top-level script in a subprocess; returns CompletedProcess (text)."""
    import subprocess
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=e, capture_output=True,
                          text=True, timeout=timeout)
