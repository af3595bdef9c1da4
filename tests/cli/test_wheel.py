"""The wheel as a user installs it: built from this checkout, installed non-editable into a fresh
venv, and run from outside the checkout: every command's --help, then a tiny train -> sample ->
eval round trip through the console scripts."""
import glob
import os
import site
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import ROOT

COMMANDS = ["gpt-jax-train", "gpt-jax-sample", "gpt-jax-eval", "gpt-jax-prepare", "gpt-jax-bench",
            "gpt-jax-study"]
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "2", "--eval_iters", "1", "--warmup_iters", "1", "--lr_decay_iters", "10",
        "--max_iters", "2", "--eval_interval", "2", "--log_interval", "1"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out),
                        ROOT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = glob.glob(str(out / "gpt_jax-*.whl"))
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed non-editable; its dependencies come from this
    interpreter's site-packages (a .pth line), so the test needs no network."""
    d = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)   # its own pip, offline
    py = str(d / "bin" / "python")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
    with open(os.path.join(purelib, "deps.pth"), "w") as f:
        f.write("\n".join(sorted(ours)) + "\n")
    # the venv's own pip: this interpreter's would also uninstall the checkout's editable install
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"python": py, "bin": str(d / "bin"), "purelib": purelib}


def test_the_wheel_holds_every_sub_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packages = {os.path.dirname(n) for n in names if n.endswith("/__init__.py")}
    want = {os.path.relpath(os.path.dirname(p), ROOT)
            for p in glob.glob(os.path.join(ROOT, "gpt_jax", "**", "__init__.py"), recursive=True)}
    assert want <= packages and "gpt_jax/lab/bench" in packages
    assert "gpt_jax/generation/cache_attention.cc" in names    # the kernel builds from it
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    assert all(f"{c} = gpt_jax.cli." in scripts for c in COMMANDS)


def run(venv, cmd, *args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GPT_JAX_DATA")}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    # the installed console script, run by the venv's own interpreter
    return subprocess.run([venv["python"], os.path.join(venv["bin"], cmd), *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_installed_commands_run_from_outside_the_checkout(venv, tmp_path):
    where = subprocess.run([venv["python"], "-c", "import gpt_jax; print(gpt_jax.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(venv["purelib"]), where.stdout   # the wheel's, not ours
    for cmd in COMMANDS:
        assert os.path.isfile(os.path.join(venv["bin"], cmd)), cmd
        r = run(venv, cmd, "--help", cwd=tmp_path, timeout=300)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-2000:])

    text = tmp_path / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 400)
    out = tmp_path / "out"
    r = run(venv, "gpt-jax-train", *TINY, "--data", str(text), "--out_dir", str(out),
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(os.listdir(out / "checkpoints")) == ["2"]
    r = run(venv, "gpt-jax-sample", "--init_from", str(out), "--num_samples", "1",
            "--max_new_tokens", "5", "--start", "The", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("The") and "---------------" in r.stdout
    assert "kernel is not available" not in r.stderr           # built from the wheel's source
    r = run(venv, "gpt-jax-eval", "--init_from", str(out), "--task", "text", "--data", str(text),
            "--limit", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ppl" in r.stdout
