"""A damaged latest checkpoint (a real truncated or overwritten file) and a full disk: every
entry point prints exactly one `error:` line and exits 1, every time (orbax's abandoned reads
used to print "Event loop is closed" / "Exception ignored" dumps around it, intermittently),
and the advice it gives works when followed (--step N, --resume_step N, --init_from resume)."""
import asyncio
import gc
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, damage_params_file

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, eval_iters=1,
            warmup_iters=2, lr_decay_iters=100, log_interval=1)
QUIET = dict(progress=False, log=lambda *a: None)


@pytest.fixture(scope="module")
def run_dir(builtin_data, tmp_path_factory):
    """A train.py out_dir with steps 2 and 4 (params and optimizer state)."""
    from gpt_jax.train.config import TrainConfig
    from gpt_jax.train.trainer import Trainer
    out = str(tmp_path_factory.mktemp("run"))
    Trainer(TrainConfig.from_dict({**TINY, "max_iters": 4, "eval_interval": 2,
                                   "out_dir": out}), **QUIET).fit()
    return out


def damaged_copy(run_dir, dest, how="truncate"):
    """run_dir with step 4's largest params file truncated to half, or a third overwritten."""
    shutil.copytree(run_dir, dest)
    damage_params_file(dest, 4, how)
    return dest


def abandoned_tasks():
    """asyncio tasks still pending on a closed event loop: reads a failed restore left to
    finish (and print) whenever their I/O completes."""
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, asyncio.Task) and not o.done()
            and o.get_loop().is_closed()]


def cli_error(capfd, main, *argv):
    """Run a CLI's main through gpt_jax.cli.common.run in this process: (exit code, stderr, stdout)."""
    from gpt_jax.cli.common import run
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: main(list(argv)) if argv else main())
    gc.collect()
    out, err = capfd.readouterr()
    return e.value.code, err, out


@pytest.mark.parametrize("how", ["truncate", "overwrite"])
def test_damaged_step_fails_cleanly_ten_times_in_a_row(run_dir, tmp_path, capfd, how):
    from gpt_jax import CheckpointError, load_checkpoint
    d = damaged_copy(run_dir, str(tmp_path / "d"), how)
    capfd.readouterr()
    for _ in range(10):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(d)
        msg = str(e.value)
        assert "step 4" in msg and "is damaged" in msg and "\n" not in msg, msg
        assert f"intact steps: 2 (load the latest with load_checkpoint({d!r}, step=2))" in msg
        assert not abandoned_tasks()
    out, err = capfd.readouterr()
    assert err == "" and out == "", err[:2000]
    load_checkpoint(d, step=2)   # the advice, followed


def test_every_entry_point_says_one_line_and_its_step_flag(run_dir, tmp_path, capfd,
                                                          monkeypatch):
    """train.py resume, hf export, eval.py --task and sample.py, twice each: one line
    naming the entry point's own flag with the intact step, and that flag works."""
    import gpt_jax.cli.eval as eval_cli
    import gpt_jax.cli.sample as sample_cli
    import gpt_jax.cli.train as train_cli
    import gpt_jax.cli.hf as hf_cli
    d = damaged_copy(run_dir, str(tmp_path / "d"))
    text = tmp_path / "t.txt"
    text.write_text("hello world, this is a text to score. " * 20)
    flags = [f"--{k}={v}" for k, v in TINY.items()]
    cases = {
        "resume": (train_cli.main, [*flags, "--max_iters=6", f"--out_dir={d}",
                                    "--init_from=resume"], "--resume_step 2"),
        "export": (hf_cli.main, ["export", d, str(tmp_path / "hf")], "--step 2"),
        "eval": (eval_cli.main, ["--init_from", d, "--task", "text", "--data", str(text)],
                 "--step 2"),
        "sample": (sample_cli.main, None, "--step 2"),
    }
    for name, (main, argv, flag) in cases.items():
        for _ in range(2):
            if argv is None:
                monkeypatch.setattr(sys, "argv", ["sample.py", "--init_from", d,
                                                  "--max_new_tokens", "2", "--num_samples", "1"])
                code, err, _ = cli_error(capfd, main)
            else:
                code, err, _ = cli_error(capfd, main, *argv)
            assert code == 1 and err.startswith("error: checkpoint step 4") \
                and err.count("\n") == 1 and f"with {flag})" in err, (name, err[:3000])
    # the advice, followed
    code, err, _ = cli_error(capfd, hf_cli.main, "export", d, str(tmp_path / "hf"), "--step", "2")
    assert code == 0 and "from step 2" in capfd.readouterr().out + err + _
    monkeypatch.setattr(sys, "argv", ["sample.py", "--init_from", d, "--step", "2",
                                      "--max_new_tokens", "2", "--num_samples", "1"])
    code, err, out = cli_error(capfd, sample_cli.main)
    assert code == 0 and out.count("---------------") == 1, err
    code, err, out = cli_error(capfd, eval_cli.main, "--init_from", d, "--task", "text",
                               "--data", str(text), "--step", "2")
    assert code == 0 and "ppl" in out, err
    code, err, out = cli_error(capfd, train_cli.main, *flags, "--max_iters=6", f"--out_dir={d}",
                               "--init_from=resume", "--resume_step=2", "--eval_interval=2")
    assert code == 0 and "done: step 6" in out, err


def test_cli_processes_print_one_line(run_dir, tmp_path):
    """As subprocesses (what the interpreter prints at exit counts too)."""
    d = damaged_copy(run_dir, str(tmp_path / "d"), "overwrite")
    for _ in range(1):
        r = subprocess.run([sys.executable, "-m", "gpt_jax.hf", "export", d,
                            str(tmp_path / "hf")], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr[:3000]
        assert "(export the latest with --step 2)" in r.stderr


def test_step_flags_are_checked(run_dir, capfd):
    import gpt_jax.cli.eval as eval_cli
    code, err, _ = cli_error(capfd, eval_cli.main, "--init_from", "gpt2", "--task", "text",
                             "--step", "3")
    assert code == 1 and "--step 3 applies to a train.py out_dir (it picks one of its " \
        "checkpoints), and gpt2 is a Hugging Face hub name, which loads without it: drop " \
        "--step 3" in err, err
    code, err, _ = cli_error(capfd, eval_cli.main, "--init_from", run_dir, "--task", "text",
                             "--step", "-1")
    assert code == 1 and "--step must be a checkpoint step" in err, err
    code, err, _ = cli_error(capfd, eval_cli.main, "--init_from", run_dir, "--task", "text",
                             "--step", "3")
    assert code == 1 and "no checkpoint for step 3" in err and "available: [2, 4]" in err, err


class Disk:
    """A small real file system (tmpfs, when this process may mount one) or, failing that,
    orbax's writes patched to raise ENOSPC. fill(mb): make it mb MB; free(): make room."""

    def __init__(self, path, monkeypatch):
        self.path, self.mp, self.mounted = str(path), monkeypatch, False
        os.makedirs(self.path)
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", self.path],
                           check=True, capture_output=True, timeout=30)
            self.mounted = True
        except (OSError, subprocess.SubprocessError):
            pass

    def fill(self, mb):
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={mb}m", self.path], check=True)
            return
        import errno
        from orbax.checkpoint._src.handlers import json_checkpoint_handler as j
        # checkpoints here take ~20 MB; each writes two JSON items (meta, config)
        saves, room = [0], 2 if mb >= 20 else 0

        async def full(self, x, directory):
            saves[0] += 1
            if saves[0] > room:
                raise OSError(errno.ENOSPC, "No space left on device")
            return await original(self, x, directory)
        original = j.JsonCheckpointHandler._save_fn
        self.mp.setattr(j.JsonCheckpointHandler, "_save_fn", full)

    def free(self):
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", self.path], check=True)
        else:
            self.mp.undo()

    def close(self):
        if self.mounted:
            subprocess.run(["umount", self.path], check=False)


@pytest.fixture
def disk(tmp_path, monkeypatch):
    d = Disk(tmp_path / "disk", monkeypatch)
    yield d
    d.close()


@pytest.mark.parametrize("mb,saved", [(3, None), (30, 2)])
def test_full_disk_is_one_line_and_its_advice_works(builtin_data, disk, capfd, mb, saved):
    """3 MB: no checkpoint fits ("run the same command again"); 30 MB: step 2 fits, step 4
    does not ("continue with --init_from resume"). Each advice, followed once there is
    room, finishes the run."""
    import gpt_jax.cli.train as train_cli
    out = os.path.join(disk.path, "o")
    argv = [*(f"--{k}={v}" for k, v in TINY.items()), "--max_iters=4", "--eval_interval=2",
            f"--out_dir={out}"]
    disk.fill(mb)
    code, err, _ = cli_error(capfd, train_cli.main, *argv)
    # the progress bar's redraws (\r) end before the one error line
    bar, _, err = err.rpartition("\n" if err.count("\n") == 1 else "\nerror")
    err = err if err.startswith("error") else "error" + err
    assert code == 1 and err.startswith("error: could not save step") and err.count("\n") == 1, \
        err[:3000]
    assert "\n" not in bar.strip() and "Traceback" not in bar, bar
    assert "No space left on device;" in err, err
    from gpt_jax.checkpoint.manager import all_steps
    if saved is None:
        assert "(no checkpoint is on disk)" in err and err.endswith(
            "then run the same command again\n"), err
        rerun = argv
    else:
        assert f"older checkpoints are kept (the latest checkpoint on disk is step {saved})" \
            in err and err.endswith("then continue with --init_from resume\n"), err
        rerun = [*argv, "--init_from=resume"]
    assert all_steps(out) == ([] if saved is None else [saved])
    disk.free()
    code, err, out_text = cli_error(capfd, train_cli.main, *rerun)
    assert code == 0 and "done: step 4" in out_text, err[-3000:]


def test_harness_model_names_its_step_argument(run_dir, tmp_path, capfd):
    """eval.py --harness builds the lm-eval model "gpt_jax" from model_args: a damaged latest
    step is one line naming --step / model_args step, and step=2 loads."""
    pytest.importorskip("lm_eval")
    from gpt_jax import CheckpointError
    from gpt_jax.evaluation.harness import GptJaxLM
    d = damaged_copy(run_dir, str(tmp_path / "d"))
    capfd.readouterr()
    for _ in range(3):
        with pytest.raises(CheckpointError, match=r"intact steps: 2 \(evaluate the latest with "
                                                  r"--step 2, or model_args step=2\)$"):
            GptJaxLM(init_from=d)
    assert GptJaxLM(init_from=d, step="2").cfg.n_layer == 1
    gc.collect()
    assert capfd.readouterr().err == ""
