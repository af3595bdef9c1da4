import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def builtin_data(tmp_path_factory):
    """The built-in corpus, prepared once per session into a temp dir (also exported as
    $GPT_JAX_DATA, so `--data builtin` in subprocesses finds it there)."""
    from gpt_jax import data
    d = str(tmp_path_factory.mktemp("builtin"))
    data.prepare_builtin(d, progress=False)
    os.environ["GPT_JAX_DATA"] = d
    return d


def run_cli(script, *args, env=None, timeout=300, cwd=ROOT):
    """Run a CLI of the repo as a subprocess with this interpreter; returns CompletedProcess."""
    import subprocess
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
