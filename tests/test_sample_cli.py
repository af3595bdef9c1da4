"""sample.py end to end on a tiny checkpoint: output format and one-line errors."""
import os
import subprocess
import sys

import jax
import pytest

import gpt_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEP = "---------------"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    cfg = gpt_jax.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=512)
    gpt_jax.save_checkpoint(str(d), 7, gpt_jax.init_params(cfg, jax.random.key(0)), cfg)
    return str(d)


def sample(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(r, *fragments):
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    assert r.stdout == ""


def test_samples_go_to_stdout_one_per_separator(out_dir):
    r = sample(f"--init_from={out_dir}", "--start", "a b", "--num_samples", "3",
               "--max_new_tokens=8", "--temperature", "0.9", "--top_k", "20", "--top_p=0.9",
               "--seed", "3")
    assert r.returncode == 0, r.stderr
    chunks = r.stdout.split(SEP + "\n")
    assert chunks[-1] == "" and len(chunks) == 4
    assert all(c.startswith("a b") for c in chunks[:3])
    assert "tokens/s" in r.stderr and "compile" in r.stderr
    again = sample(f"--init_from={out_dir}", "--start", "a b", "--num_samples", "3",
                   "--max_new_tokens=8", "--temperature", "0.9", "--top_k", "20",
                   "--top_p=0.9", "--seed", "3")
    assert again.stdout == r.stdout  # the seed fixes the samples


def test_errors_are_one_line(out_dir, tmp_path):
    assert_one_line_error(sample("--init_from", str(tmp_path / "nothing")), "nothing")
    assert_one_line_error(sample("--init_from", out_dir, "--start", "a " * 30,
                                 "--max_new_tokens", "8"), "block_size 32", "8")
    assert_one_line_error(sample("--init_from", out_dir, "--start",
                                 f"FILE:{tmp_path / 'missing.txt'}"), "missing.txt")
    assert_one_line_error(sample("--init_from", out_dir, "--start", "Hello world"),
                          "vocab")  # ids >= 512 in a tiny model's vocabulary
    assert_one_line_error(sample("--init_from", out_dir, "--temperature=-1"), "temperature")
    assert_one_line_error(sample("--init_from", out_dir, "--num_samples", "x"), "num_samples")
