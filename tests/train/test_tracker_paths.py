"""The trackers, metrics.jsonl and the profiler on bad paths (issues 30.3 and 31.2): a file
where a directory belongs, a directory where a file belongs, a read-only file system, no
permission, a full disk, a damaged W&B resume state: one `error:` line through train.py that
says what is actually wrong (only a full disk gets the disk advice), and nothing lost:
earlier checkpoints stay, metrics.jsonl stays valid JSON lines."""
import errno
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "4", "--eval_iters", "1", "--warmup_iters", "2", "--lr_decay_iters",
        "100", "--log_interval", "1"]
DISK = "Free space on that disk"


def run_main(capsys, *argv):
    """train.py's main in process, through cli.run: (exit code, stderr's last line)."""
    import gpt_jax.cli.train as train_cli
    from gpt_jax.cli.common import run
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: train_cli.main([str(a) for a in argv]))
    err = capsys.readouterr().err
    return e.value.code, err.strip().splitlines()[-1] if err.strip() else ""


def one_line_error(code, line, *parts, disk=False):
    assert code == 1 and line.startswith("error: "), line
    for p in parts:
        assert p in line, line
    assert (DISK in line) == disk, line


def test_only_a_full_disk_gets_the_disk_advice(tmp_path):
    """write_failed, the one line of every failed write of a run: each errno says what is
    wrong (the same for --profile_steps' directory, metrics.jsonl, loss.png, the trackers)."""
    from gpt_jax.train.end import write_failed
    (tmp_path / "f").write_text("x")
    cases = {errno.ENOSPC: DISK, errno.EDQUOT: DISK,
             errno.EEXIST: "It is a file where a directory belongs: move it away",
             errno.ENOTDIR: f"{tmp_path / 'f'} is a file where a directory belongs",
             errno.EISDIR: "It is a directory where a file belongs: move it away",
             errno.EROFS: "Its file system is read-only: make it writable",
             errno.EACCES: "This user may not write there: give it write permission",
             errno.EPERM: "This user may not write there"}
    for code, words in cases.items():
        path = str(tmp_path / "f" / "x") if code == errno.ENOTDIR else str(tmp_path / "f")
        msg = write_failed(OSError(code, os.strerror(code), path), "metrics.jsonl",
                           str(tmp_path))
        assert words in msg and (DISK in msg) == (code in (errno.ENOSPC, errno.EDQUOT)), msg
        assert msg.endswith("run the same command again") and "\n" not in msg, msg


def test_a_file_or_directory_in_the_way(builtin_data, tmp_path, capsys, offline_wandb):
    """out_dir/tensorboard or out_dir/wandb a file, out_dir/metrics.jsonl a directory,
    out_dir/profile a file with --profile_steps: one line each (the old lines blamed the disk,
    the profile's was a FileExistsError traceback)."""
    for name, kind, flags, what in [
            ("tensorboard", "file", ["--log_to", "tensorboard"], "TensorBoard's events"),
            ("wandb", "file", ["--log_to", "wandb"], "the W&B run's files"),
            ("metrics.jsonl", "dir", [], "metrics.jsonl"),
            ("profile", "file", ["--profile_steps", "1:2"], "the profile (--profile_steps)")]:
        out = tmp_path / name.replace(".", "_")
        out.mkdir()
        (out / name).mkdir() if kind == "dir" else (out / name).write_text("mine\n")
        code, line = run_main(capsys, *TINY, "--max_iters", "2", *flags, "--out_dir", out)
        belongs = "a file where a directory" if kind == "file" else "a directory where a file"
        one_line_error(code, line, f"could not write {what}", f"({out / name})",
                       f"It is {belongs} belongs: move it away, then run the same command")
        assert kind == "dir" or (out / name).read_text() == "mine\n"


def test_a_full_disk_under_tensorboard_keeps_the_checkpoint(builtin_data, tmp_path, capsys,
                                                            monkeypatch):
    """TensorBoard's writes fail with ENOSPC at the flush before the checkpoint of step 2
    (a writer patched in process; the next test fills a real tmpfs): one line with the disk
    advice, step 2 saved all the same, metrics.jsonl whole."""
    pytest.importorskip("tensorboardX", reason="the `track` extra (tensorboardX) is not installed")
    from tensorboardX import record_writer
    from gpt_jax.checkpoint.manager import all_steps
    from gpt_jax.train.metrics import read_metrics

    def full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real = record_writer.RecordWriter.flush
    calls = []
    monkeypatch.setattr(record_writer.RecordWriter, "flush",
                        lambda self: calls.append(1) or (real(self) if len(calls) == 1
                                                        else full(self)))
    out = tmp_path / "out"
    code, line = run_main(capsys, *TINY, "--max_iters", "4", "--eval_interval", "2",
                          "--log_to", "tensorboard", "--out_dir", out)
    one_line_error(code, line, "could not write TensorBoard's events", "No space left",
                   f"({out / 'tensorboard'})", "then continue with --init_from resume",
                   "(step 2 is saved)", disk=True)
    assert all_steps(str(out)) == [2]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [s for s in (0, 1, 2, 2)]
    assert [r["kind"] for r in read_metrics(str(out))] == ["eval", "train", "train", "eval"]


def test_a_damaged_wandb_resume_state_is_one_line(builtin_data, tmp_path, capsys,
                                                  offline_wandb):
    """out_dir/wandb/gpt_jax_run.json not JSON, a JSON list, a step that is no integer, an id
    that is no string: one line each saying how to go on; the checkpoint and metrics.jsonl
    are as they were (the old code: JSONDecodeError / AttributeError / ValueError)."""
    out = tmp_path / "out"
    code, line = run_main(capsys, *TINY, "--max_iters", "2", "--out_dir", out)
    assert code == 0, line
    rows = (out / "metrics.jsonl").read_bytes()
    state = out / "wandb" / "gpt_jax_run.json"
    state.parent.mkdir()
    for content, words in [("{not json", "is damaged (not JSON)"),
                           ("[1, 2]", "holds a JSON list, not the object"),
                           ('{"id": "abc12345", "last_step": "ten"}',
                            "\"last_step\" must be a step (an integer, -1: none), got 'ten'"),
                           ('{"id": 5, "last_step": 2}', "\"id\" must be a W&B run id")]:
        state.write_text(content)
        code, line = run_main(capsys, *TINY, "--max_iters", "4", "--init_from", "resume",
                              "--log_to", "wandb", "--out_dir", out)
        one_line_error(code, line, str(state), words, "remove it to continue in a new W&B run",
                       "sent to it again from metrics.jsonl")
        assert (out / "metrics.jsonl").read_bytes() == rows
        assert sorted(os.listdir(out / "checkpoints")) == ["2"]
    state.unlink()   # as the message says: a new W&B run, sent the rows up to step 2
    code, line = run_main(capsys, *TINY, "--max_iters", "3", "--init_from", "resume",
                          "--log_to", "wandb", "--out_dir", out)
    assert code == 0, line
    assert json.loads(state.read_text())["last_step"] == 3


# -- real file systems: a full tmpfs, a read-only one (root: mount), no permission -------------

def mount(*args):
    r = subprocess.run(["mount", *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:80]})")


def train(*args, prefix=(), env=None):
    return subprocess.run([*prefix, sys.executable, os.path.join(ROOT, "train.py"), *TINY,
                           *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def last_line(r):
    return r.returncode, r.stderr.strip().splitlines()[-1]


def test_real_full_and_read_only_file_systems(builtin_data, tmp_path):
    """train.py with out_dir/tensorboard on a 12 KiB tmpfs (it fills mid-run: the disk
    advice; the run's checkpoints stay), and out_dir/wandb on a read-only tmpfs (W&B's own
    OSError, told before as a missing `wandb login`)."""
    pytest.importorskip("tensorboardX", reason="the `track` extra (tensorboardX) is not installed")
    pytest.importorskip("wandb", reason="the `track` extra (wandb) is not installed")
    from gpt_jax.checkpoint.manager import all_steps
    full, ro = tmp_path / "full", tmp_path / "ro"
    (full / "tensorboard").mkdir(parents=True)
    (ro / "wandb").mkdir(parents=True)
    mount("-t", "tmpfs", "-o", "size=12k", "tmpfs", str(full / "tensorboard"))
    try:
        mount("-t", "tmpfs", "-o", "ro", "tmpfs", str(ro / "wandb"))
        try:
            r = train("--max_iters", "200", "--eval_interval", "2", "--log_to", "tensorboard",
                      "--out_dir", full)
            one_line_error(*last_line(r), "could not write TensorBoard's events",
                           "No space left on device", disk=True)
            assert all_steps(str(full))
            for line in (full / "metrics.jsonl").read_text().splitlines():
                json.loads(line)
            r = train("--max_iters", "2", "--log_to", "wandb", "--out_dir", ro,
                      env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
            one_line_error(*last_line(r), "could not write the W&B run's files",
                           "Its file system is read-only", "run the same command again")
            assert "wandb login" not in r.stderr
        finally:
            subprocess.run(["umount", str(ro / "wandb")])
    finally:
        subprocess.run(["umount", str(full / "tensorboard")])


def test_a_profile_directory_this_user_may_not_write(builtin_data, tmp_path):
    """--profile_steps with out_dir/profile not writable (mode 555, as a run without
    CAP_DAC_OVERRIDE meets it): one line before any training (the old code: a
    JaxRuntimeError PERMISSION_DENIED traceback when the trace was written)."""
    from file_modes import without_file_override
    out = tmp_path / "out"
    (out / "profile").mkdir(parents=True)
    os.chmod(out / "profile", 0o555)
    r = train("--max_iters", "2", "--profile_steps", "0:1", "--out_dir", out,
              prefix=without_file_override())
    one_line_error(*last_line(r), f"could not write the profile (--profile_steps) "
                   f"({out / 'profile'}): Permission denied",
                   "This user may not write there", "run the same command again")
    assert not (out / "checkpoints").exists()
