"""train.py and prepare.py end to end, as subprocesses; resume exactness; signals; config."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, run_cli

TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "4", "--eval_iters", "1", "--warmup_iters", "2", "--lr_decay_iters", "100"]


def rows(out_dir, kind=None):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rs = [json.loads(line) for line in f if line.strip()]
    return [r for r in rs if kind is None or r["kind"] == kind]


def test_train_end_to_end(builtin_data, tmp_path):
    out = str(tmp_path / "out")
    r = run_cli("train.py", *TINY, "--max_iters=6", "--eval_interval", "3", "--log_interval=2",
                "--out_dir", out)
    assert r.returncode == 0, r.stderr
    assert "n_layer                      2" in r.stdout and "done: step 6" in r.stdout
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["3", "6"]
    with open(os.path.join(out, "loss.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    train = rows(out, "train")
    assert [r["step"] for r in train] == [2, 4, 6]
    keys = {"kind", "step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "mfu", "time",
            "loss_z", "grad_z", "skipped", "param_norm", "update_ratio", "clipped"}
    keys |= {f"{k}/{g}" for k in ("grad_norm", "param_norm")
             for g in ("wte", "wpe", "ln_f", "h_0", "h_1")}   # health: per layer (2 here)
    assert all(set(r) == keys for r in train)
    assert train[-1]["tokens"] == 6 * 4 * 32 and 0 < train[-1]["mfu"] < 1.5
    ev = rows(out, "eval")
    assert [r["step"] for r in ev] == [0, 3, 6]
    assert all(set(r) == {"kind", "step", "train_loss", "val_loss", "time"} for r in ev)
    # sample.py's entry point: the checkpoint loads as (params, cfg)
    from gpt_jax import load_checkpoint
    params, cfg = load_checkpoint(out)
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size) == (2, 32, 32)
    assert params["wte"]["embedding"].shape == (50257, 32)
    # eval_only on the checkpoint
    r = run_cli("train.py", *TINY, "--out_dir", out, "--init_from", "resume",
                "--eval_only", "true")
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stdout
    # a config that does not fit the checkpoint: one-line error
    r = run_cli("train.py", *TINY, "--n_embd", "64", "--out_dir", out, "--init_from", "resume")
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "n_embd: 32 vs 64" in r.stderr
    # scratch into an out_dir that holds checkpoints is refused
    r = run_cli("train.py", *TINY, "--out_dir", out)
    assert r.returncode == 1 and "--init_from resume" in r.stderr


def test_resume_is_bitwise_exact(builtin_data, tmp_path):
    """N steps straight == N/2 steps, SIGKILL, resume to N: same losses, same params. With the
    wsd schedule and the spike guard on, and bad batches (the test hook) before and after the
    kill: the resumed run takes both from the checkpoint (only --init_from resume is given
    again), restores the guard's statistics and skips the same updates."""
    n = 16
    args = [*TINY, "--dropout", "0.1", "--max_iters", str(n), "--eval_interval", str(n // 2),
            "--log_interval", "1", "--lr_decay_iters", str(n)]
    run_keys = ["--lr_schedule", "wsd", "--decay_frac", "0.5", "--skip_grad_z", "3",
                "--skip_warmup", "4"]
    env = {"GPT_JAX_TEST_BAD_BATCH_STEPS": "6,11"}
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    r = run_cli("train.py", *args, *run_keys, "--out_dir", a, env=env)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args, *run_keys,
                             "--out_dir", b], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **env})
    half = os.path.join(b, "checkpoints", str(n // 2))
    t0 = time.time()
    while not os.path.isdir(half):   # orbax renames the step dir into place when committed
        assert proc.poll() is None and time.time() - t0 < 240, "no step-N/2 checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from gpt_jax.checkpoint.manager import latest_step
    assert latest_step(b) == n // 2, "the run finished before it was killed"
    r = run_cli("train.py", *args, "--out_dir", b, "--init_from", "resume", env=env)
    assert r.returncode == 0, r.stderr
    assert "'wsd'" in r.stdout   # the resolved config printed: the schedule came back
    keys = ("step", "loss", "grad_norm", "lr", "skipped", "loss_z", "grad_z")
    la = [tuple(r[k] for k in keys) for r in rows(a, "train")]
    lb = [tuple(r[k] for k in keys) for r in rows(b, "train")]
    assert [s for s, *_ in la] == list(range(1, n + 1))
    assert la == lb
    assert [r["step"] for r in rows(a, "skip")] == [r["step"] for r in rows(b, "skip")] == [7, 12]
    assert len({r["lr"] for r in rows(a, "train")}) > 3   # wsd's decay moved the lr
    from gpt_jax import load_checkpoint
    pa, pb = load_checkpoint(a)[0], load_checkpoint(b)[0]
    import jax
    for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigterm_saves_and_exits(builtin_data, tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *TINY,
                             "--max_iters", "100000", "--eval_interval", "50000",
                             "--log_interval", "1", "--out_dir", out], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not (os.path.exists(os.path.join(out, "metrics.jsonl"))
               and len(rows(out, "train")) >= 2):
        assert proc.poll() is None and time.time() - t0 < 240
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    from gpt_jax.checkpoint.manager import latest_step
    step = latest_step(out)
    assert step is not None and 2 <= step < 100000
    assert f"SIGTERM: saved step {step}" in stderr


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_eval_tasks_during_training(builtin_data, tmp_path):
    """--eval_tasks on a scan_layers run over a 2-device fsdp mesh (stacked, sharded params):
    eval_task rows at step 0 and every eval_interval, printed, and a loss.png panel; the last
    rows equal run_task on the saved weights (GPT-2 layout, one device); a resume drops the rows
    after its step and writes them again, the same."""
    from task_files import task_files
    from gpt_jax import load_checkpoint
    import gpt_jax.evaluation.tasks as tasks
    files = task_files(tmp_path, rows=8)
    out = str(tmp_path / "out")
    args = [*TINY, "--max_iters", "4", "--eval_interval", "2", "--log_interval", "2",
            "--eval_tasks", f"hellaswag={files['hellaswag']},lambada={files['lambada']}",
            "--eval_task_limit", "6", "--mesh", "fsdp=2", "--scan_layers", "true",
            "--out_dir", out]
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    r = run_cli("train.py", *args, env=env)
    assert r.returncode == 0, r.stderr
    first = rows(out, "eval_task")
    assert [(x["step"], x["task"]) for x in first] == [
        (s, t) for s in (0, 2, 4) for t in ("hellaswag", "lambada")]
    assert set(first[0]) == {"kind", "step", "task", "n", "acc", "acc_norm", "seconds"}
    assert set(first[1]) == {"kind", "step", "task", "n", "acc", "ppl", "seconds"}
    assert all(x["n"] == 6 for x in first)
    assert "step 4: lambada acc " in r.stdout and "step 0: hellaswag acc " in r.stdout
    width, height = png_size(os.path.join(out, "loss.png"))
    assert height > width      # the losses alone are a wide panel; the tasks' is under it
    params, cfg = load_checkpoint(out)
    for row in first[-2:]:
        want = tasks.run_task(params, cfg, row["task"], files[row["task"]], limit=6)
        for m in tasks.METRICS[row["task"]]:
            assert row[m] == pytest.approx(want[m], rel=1e-4), (row, want)
    assert abs(first[-1]["ppl"] / first[1]["ppl"] - 1) > 1e-3   # scored on trained weights
    r = run_cli("train.py", *args, "--init_from", "resume", "--resume_step", "2", env=env)
    assert r.returncode == 0, r.stderr
    again = rows(out, "eval_task")
    assert [(x["step"], x["task"]) for x in again] == [(x["step"], x["task"]) for x in first]
    for a, b in zip(first, again):
        assert {k: v for k, v in a.items() if k != "seconds"} == \
            {k: v for k, v in b.items() if k != "seconds"}


def test_bad_data_one_line_errors(tmp_path):
    r = run_cli("train.py", *TINY, "--data", str(tmp_path / "missing.txt"),
                "--out_dir", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "does not exist" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    (tmp_path / "short.txt").write_text("too short")
    r = run_cli("train.py", *TINY, "--data", str(tmp_path / "short.txt"),
                "--out_dir", str(tmp_path / "o"))
    assert r.returncode == 1 and "fewer than block_size" in r.stderr.splitlines()[-1]
    r = run_cli("train.py", "--learning_rate", "-1")
    assert r.returncode == 1 and "learning_rate" in r.stderr


def test_prepare_end_to_end(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    for i in range(25):
        (src / f"doc{i:02d}.txt").write_text(f"document {i}: " + "lorem ipsum " * 20)
    r = run_cli("prepare.py", "--input", str(src), "--out_dir", str(tmp_path / "tok"))
    assert r.returncode == 0, r.stderr
    meta = json.load(open(tmp_path / "tok" / "meta.json"))
    assert meta["documents"] == 25 and meta["split"]["method"] == "documents"
    assert os.path.getsize(tmp_path / "tok" / "train.bin") == 2 * meta["train_tokens"]
    assert "train and" in r.stdout
    r = run_cli("prepare.py", "--input", str(tmp_path / "nope"), "--out_dir", str(tmp_path / "x"))
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_config_precedence(tmp_path):
    from gpt_jax.errors import ConfigError, UserError
    from gpt_jax.train.config import TrainConfig, resolve_config
    sys.path.insert(0, ROOT)
    import gpt_jax.cli.train as train_cli
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"n_layer": 3, "batch_size": 5, "learning_rate": 1}))
    config, flags, launch = train_cli.parse_args(["--config", str(f), "--batch_size=7",
                                                  "--bias", "false", "--process_id", "1"])
    assert launch == {"coordinator_address": None, "num_processes": None, "process_id": 1}
    tc = resolve_config(config, flags)
    assert (tc.model.n_layer, tc.batch_size, tc.model.bias, tc.learning_rate) == \
        (3, 7, False, 1.0)
    assert tc.model.n_embd == TrainConfig().model.n_embd           # default
    g = resolve_config("gpt2-124m", {"max_iters": 10})
    assert (g.model.n_layer, g.model.n_embd, g.model.dtype, g.max_iters) == \
        (12, 768, "bfloat16", 10)
    assert g.tokens_per_step == 524288
    t = tmp_path / "c.toml"
    t.write_text('n_head = 8\nn_embd = 128\ndtype = "bfloat16"\n')
    assert resolve_config(str(t)).model.n_head == 8
    f.write_text(json.dumps({"n_layers": 3}))
    with pytest.raises(ConfigError, match="unknown key.*n_layers"):
        resolve_config(str(f))
    assert resolve_config("cpu-small", {"remat": True, "mesh": "fsdp=-1"}).remat
    with pytest.raises(ConfigError, match="axes data and fsdp"):
        resolve_config("cpu-small", {"mesh": "model=2"})
    with pytest.raises(UserError, match="--bias.*expected true or false"):
        train_cli.parse_args(["--bias", "maybe"])


def run_main(capsys, *argv):
    """train.py's main in process, through cli.run: (exit code, stderr)."""
    import gpt_jax.cli.train as train_cli
    from gpt_jax.cli.common import run
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: train_cli.main([str(a) for a in argv]))
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", [
    "bogus", "seed", "nan", "inf", "max_iters", "resme", "out_file", "out_under_file",
    "config_out_dir", "config_data", "config_dir", "resume_step", "resume_missing_step",
    "num_processes", "process_id", "no_coordinator", "eval_task_unknown", "eval_task_missing",
    "eval_task_dir", "eval_task_no_path", "eval_task_twice", "eval_task_limit_alone"])
def test_one_line_errors(tmp_path, capsys, monkeypatch, case):
    """Each is one `error:` line and exit 1, before any data is read or anything compiled."""
    for var in ("JAX_COORDINATOR_ADDRESS", "GPT_JAX_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "file").write_text("x")
    (tmp_path / "out_dir.json").write_text('{"out_dir": 5}')
    (tmp_path / "data.json").write_text('{"data": ["x"]}')
    out = ["--out_dir", tmp_path / "o"]
    args, words = {
        "bogus": (["--bogus", "1"], "unrecognized arguments: --bogus 1 (see python train.py"),
        "seed": (["--seed", "99999999999999999999", *out], "seed must be at most"),
        "nan": (["--learning_rate", "nan", *out], "learning_rate must be a finite"),
        "inf": (["--min_lr", "inf", *out], "min_lr must be a finite"),
        "max_iters": (["--max_iters", "0", *out], "--max_iters 0 trains nothing"),
        "resme": (["--init_from", "resme", *out], "'resme' is not scratch, resume, a dir"),
        "out_file": (["--out_dir", tmp_path / "file"], "is a file, not a directory"),
        "out_under_file": (["--out_dir", tmp_path / "file" / "o"], "not a writable directory"),
        "config_out_dir": (["--config", tmp_path / "out_dir.json"], "out_dir must be a non-"),
        "config_data": (["--config", tmp_path / "data.json", *out], "data must be a non-empty"),
        "config_dir": (["--config", tmp_path, *out], "is not a file"),
        "resume_step": (["--resume_step", "3", *out], "needs init_from resume"),
        "num_processes": (["--num_processes", "0", *out], "--num_processes must be at least 1"),
        "process_id": (["--num_processes", "2", "--process_id", "2",
                        "--coordinator_address", "localhost:1", *out], "--process_id must be"),
        "no_coordinator": (["--num_processes", "2", "--process_id", "1", *out],
                           "need --coordinator_address"),
        "resume_missing_step": (["--init_from", "resume", *out], "does not exist: train a"),
        "eval_task_unknown": (["--eval_tasks", "mmlu=x.jsonl", *out], "unknown task 'mmlu'"),
        "eval_task_missing": (["--eval_tasks", f"lambada={tmp_path / 'nope.jsonl'}", *out],
                              "nope.jsonl: the file does not exist"),
        "eval_task_dir": (["--eval_tasks", f"hellaswag={tmp_path}", *out], "is not a file"),
        "eval_task_no_path": (["--eval_tasks", "hellaswag=", *out], "hellaswag= needs a path"),
        "eval_task_twice": (["--eval_tasks", "text=a,text=b", *out], "names text twice"),
        "eval_task_limit_alone": (["--eval_task_limit", "5", *out], "needs eval_tasks"),
    }[case]
    code, err = run_main(capsys, *args)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert words in err, err
    assert not (tmp_path / "o").exists()


def test_bad_flag_exit_code_as_a_subprocess(tmp_path):
    r = run_cli("train.py", "--n_layer", "two")
    assert r.returncode == 1 and r.stderr.startswith("error: argument --n_layer"), r.stderr
    assert r.stderr.count("\n") == 1 and "usage:" not in r.stderr
