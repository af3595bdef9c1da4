"""The public face: `import gpt_jax` loads nothing heavy, every documented name resolves from
its sub-package, and the old entry points (`python -m gpt_jax.hf`, `import gpt_jax.evals`)
still answer."""
import subprocess
import sys

import gpt_jax
from conftest import ROOT

DOCUMENTED = ["GPTConfig", "GPT", "init_params", "count_params", "get_tokenizer", "generate",
              "compile_generate", "generate_stream", "beam_search", "GenerationConfig",
              "log_probs", "loglikelihood", "token_logprobs", "save_checkpoint",
              "load_checkpoint", "load_model", "from_hf", "to_hf", "UserError", "ConfigError",
              "CheckpointError", "DataError", "TrainConfig"]


def test_import_is_lazy():
    code = ("import sys, gpt_jax; heavy = [m for m in ('jax', 'flax', 'optax', 'orbax', "
            "'numpy', 'tiktoken') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_every_documented_name_resolves():
    assert set(DOCUMENTED) <= set(gpt_jax.__all__) <= set(dir(gpt_jax))
    for name in gpt_jax.__all__:
        obj = getattr(gpt_jax, name)
        assert obj is not None and getattr(obj, "__module__", "gpt_jax").startswith("gpt_jax")
    assert gpt_jax.generate is gpt_jax.generation.generate
    assert gpt_jax.GPTConfig is gpt_jax.model.GPTConfig


def test_unknown_name_is_an_attribute_error():
    try:
        gpt_jax.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("no AttributeError")


def test_old_entry_points_answer():
    r = subprocess.run([sys.executable, "-m", "gpt_jax.hf", "--help"], capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "export" in r.stdout and "RuntimeWarning" not in r.stderr
