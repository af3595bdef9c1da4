import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORT = os.path.join(ROOT, "tests", "support")   # the reference helpers the tests share
for path in (SUPPORT, ROOT):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture
def tiny_cfg():
    from gpt_jax import GPTConfig
    return GPTConfig.from_preset("gpt2-tiny", vocab_size=256, block_size=32)


@pytest.fixture(scope="session")
def builtin_data(tmp_path_factory):
    """The built-in corpus, prepared once per session into a temp dir (also exported as
    $GPT_JAX_DATA, so `--data builtin` in subprocesses finds it there)."""
    import gpt_jax.data.prepare as corpus
    d = str(tmp_path_factory.mktemp("builtin"))
    corpus.prepare_builtin(d, progress=False)
    os.environ["GPT_JAX_DATA"] = d
    return d


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B in offline mode with its files under tmp_path: no network, no login, no home dir."""
    pytest.importorskip("wandb", reason="the `track` extra (wandb) is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))


def run_cli(script, *args, env=None, timeout=300, cwd=ROOT):
    """Run a CLI of the repo as a subprocess with this interpreter; returns CompletedProcess."""
    import subprocess
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


# A tiny run for the training-function tests (test_steps, test_optimizer, test_loss).
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=512, batch_size=4)


def tiny_tc(**kw):
    from gpt_jax.train.config import TrainConfig
    return TrainConfig.from_dict({**TINY, "warmup_iters": 5, "lr_decay_iters": 100, **kw})


def random_batch(key, shape, vocab=512):
    import jax
    import jax.numpy as jnp
    return jax.random.randint(jax.random.key(key), shape, 0, vocab, jnp.int32)


def damage_params_file(out_dir, step, how="truncate"):
    """A real damaged checkpoint: step's largest params data file truncated to half
    ("truncate") or a third of it overwritten with random bytes ("overwrite")."""
    import numpy as np
    from gpt_jax.checkpoint.manager import checkpoint_dir
    files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(checkpoint_dir(out_dir),
                                                                    str(step), "params"))
             for f in fs]
    path = max(files, key=os.path.getsize)
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, size // 2)
    else:
        with open(path, "r+b") as f:
            f.seek(size // 3)
            f.write(np.random.default_rng(0).bytes(size // 3))
    return path
