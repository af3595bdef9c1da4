"""One run per out_dir (gpt_jax/checkpoint/run_lock.py): a second train.py run on a held out_dir stops
with one line naming the holder, fresh or resumed; a lock left by a killed run is taken over
with a message; save_checkpoint respects it. Real processes hold the locks."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import pytest

from conftest import ROOT, run_cli

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "4", "--eval_iters", "1", "--warmup_iters", "2", "--lr_decay_iters", "100",
        "--log_interval", "1"]


def holder(out_dir):
    try:
        with open(os.path.join(out_dir, "run.lock")) as f:
            return json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None


def one_line_error(r, *parts):
    assert r.returncode == 1, (r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for p in parts:
        assert p in err, err


def test_a_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(builtin_data, tmp_path):
    out = str(tmp_path / "out")
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *TINY,
                              "--max_iters", "100000", "--eval_interval", "100000", "--out_dir", out],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        t0 = time.time()
        while not holder(out):
            assert first.poll() is None and time.time() - t0 < 240, "the first run did not start"
            time.sleep(0.05)
        h = holder(out)
        assert h["pid"] == first.pid and h["host"] and "train.py" in h["command"], h
        # a second run from scratch (another seed), and a resume: one line each, naming it
        for extra in (["--seed", "7"], ["--init_from", "resume"]):
            r = run_cli("train.py", *TINY, "--max_iters", "4", "--out_dir", out, *extra)
            one_line_error(r, f"{out} is in use by another run: pid {first.pid} on host "
                              f"{h['host']} since {h['since']}", "--out_dir")
        assert first.poll() is None     # untouched by the refused runs
    finally:
        first.send_signal(signal.SIGKILL)   # dies holding the lock: no release
        first.wait()
    assert holder(out)["pid"] == first.pid
    # the OS released the dead run's flock: the next run takes the lock over, says so, and
    # removes the lock file when it ends
    r = run_cli("train.py", *TINY, "--max_iters", "2", "--out_dir", out)   # it saved nothing
    assert r.returncode == 0, r.stderr
    assert f"taking over the lock left by pid {first.pid}" in r.stdout, r.stdout
    assert "done: step 2" in r.stdout
    assert not os.path.exists(os.path.join(out, "run.lock"))


def test_lock_is_released_on_errors_and_respected_by_save_checkpoint(builtin_data, tmp_path,
                                                                     tiny_cfg):
    from gpt_jax import init_params, save_checkpoint
    from gpt_jax.checkpoint.run_lock import LockedError, RunLock
    from gpt_jax.train.trainer import Trainer
    from gpt_jax.train.config import TrainConfig
    out = str(tmp_path)
    with RunLock(out):
        with pytest.raises(LockedError, match=f"pid {os.getpid()} on host"):
            save_checkpoint(out, 1, init_params(tiny_cfg, jax.random.key(0)), tiny_cfg)
        assert not os.path.isdir(os.path.join(out, "checkpoints"))
    tc = TrainConfig.from_dict(dict(n_layer=1, n_embd=32, block_size=32, batch_size=4,
                                    eval_iters=1, out_dir=out, init_from="resume"))
    with pytest.raises(Exception, match="no checkpoints/ directory"):   # fails in __init__
        Trainer(tc, progress=False, log=lambda *a: None)
    assert not os.path.exists(os.path.join(out, "run.lock"))   # released on the error
    save_checkpoint(out, 1, init_params(tiny_cfg, jax.random.key(0)), tiny_cfg)
    assert not os.path.exists(os.path.join(out, "run.lock"))


# -- out_dir/run.lock in odd states: one line naming the file and what to do; nothing written
#    through a link. train.py stops at the lock, before any data or compile (about 2 s each).

def test_a_lock_path_that_is_not_a_plain_file_is_refused(tmp_path):
    """A directory, a symbolic link (to a user's file, or dangling) and a named pipe at
    out_dir/run.lock: one line each, for a fresh run and a resume; the file a link points to
    is left as it was (the old code wrote the holder's JSON line into it)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("precious user notes\n")
    cases = {"dir": ("a directory", "move it away"),
             "link": (f"a symbolic link to {notes}", "remove the link"),
             "dangling": (f"a symbolic link to {tmp_path / 'nothing'}", "remove the link"),
             "fifo": ("a named pipe", "remove it")}
    for name, (what, todo) in cases.items():
        out = tmp_path / name
        out.mkdir()
        lock = out / "run.lock"
        if name == "dir":
            lock.mkdir()
        elif name == "link":
            lock.symlink_to(notes)
        elif name == "dangling":
            lock.symlink_to(tmp_path / "nothing")
        else:
            os.mkfifo(lock)
        for extra in ([], ["--init_from", "resume"]):
            r = run_cli("train.py", *TINY, "--max_iters", "2", "--out_dir", out, *extra,
                        timeout=120)
            one_line_error(r, f"{lock} is {what}, where --out_dir {out} keeps its run lock",
                           todo, "pass another --out_dir")
        assert notes.read_text() == "precious user notes\n"
        assert not (tmp_path / "nothing").exists()
        assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_an_unreadable_lock_file_is_one_line(tmp_path):
    """A lock file this user may not open (another user's, mode 000), as a run without
    CAP_DAC_OVERRIDE meets it: one line naming it; the file is left as it was."""
    out = tmp_path / "out"
    out.mkdir()
    lock = out / "run.lock"
    lock.write_text("")
    os.chmod(lock, 0)
    from file_modes import without_file_override
    try:
        r = subprocess.run([*without_file_override(), sys.executable,
                            os.path.join(ROOT, "train.py"), *TINY, "--max_iters", "2",
                            "--out_dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    finally:
        os.chmod(lock, 0o644)
    one_line_error(r, f"cannot open {lock}, the run lock of --out_dir {out} (Permission denied)",
                   "pass another --out_dir", f"chmod u+rw {lock}")
    assert os.path.isfile(lock) and os.path.getsize(lock) == 0
