"""--log_to (gpt_jax/train/tracking.py) and --profile_steps (gpt_jax/train/profiling.py): what TensorBoard
and W&B hold is what metrics.jsonl holds, read back with their own readers, across a resume;
a profile trace appears for the steps asked."""
import glob
import json
import os
import struct

import numpy as np
import pytest

from gpt_jax.errors import ConfigError, UserError
from gpt_jax.train.config import TrainConfig


def tc_for(out_dir, **kw):
    base = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, max_iters=4,
                learning_rate=5e-3, min_lr=5e-4, warmup_iters=1, lr_decay_iters=30,
                eval_interval=2, eval_iters=1, log_interval=1, out_dir=str(out_dir))
    return TrainConfig.from_dict({**base, **kw})


QUIET = dict(progress=False, log=lambda *a: None)


# -- readers: each tracker's files read back with its own library -----------------------------

def tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(path):
    """The Record protos of a .wandb file: W&B's header (':W&B', magic, version: 7 bytes),
    then a LevelDB-style log of 32 KiB blocks (records: crc32c, length, type, data)."""
    from wandb.proto import wandb_internal_pb2 as pb
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B"
    pos, chunks, out = 7, b"", []
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:   # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:   # zero padding
            pos += room
            continue
        if pos + 7 + length > len(data):   # a record still being written
            break
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):   # FULL, LAST
            r = pb.Record()
            r.ParseFromString(chunks)
            out.append(r)
            chunks = b""
    return out


def finished_records(run_file, timeout=60.0):
    """The records of a finished run: W&B's service writes the file on its own after
    run.finish() returns, so wait for the run's exit record (a process that ends waits for
    the service; a test that reads at once may find a file half written)."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or \
                time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wandb_history(run_file) -> dict[int, dict[str, float]]:
    """{step: {key: value}} of a W&B run file (W&B's own `_` keys left out)."""
    hist: dict[int, dict[str, float]] = {}
    for r in finished_records(run_file):
        if r.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                     for i in r.history.item}
            step = r.history.step.num
            assert step not in hist, f"step {step} twice in one W&B run file"
            hist[step] = {k: v for k, v in items.items() if not k.startswith("_")}
    return hist


def wandb_runs(out_dir) -> dict[int, dict[str, float]]:
    """{step: {key: value}} over every W&B run directory of out_dir (a run continues in a new
    directory after each checkpoint's flush), each step in one of them only, all of them one
    W&B run (one id)."""
    files = sorted(glob.glob(os.path.join(str(out_dir), "wandb", "offline-run-*",
                                          "run-*.wandb")))
    assert files and len({os.path.basename(f) for f in files}) == 1, files
    out: dict[int, dict[str, float]] = {}
    for f in files:
        for step, values in wandb_history(f).items():
            assert step not in out, f"step {step} in two W&B run files"
            out[step] = values
    return out


def series(hist, tags):
    """metrics.jsonl-like series {tag: [(step, value)]} of a W&B history, for these tags."""
    return {t: [(s, hist[s][t]) for s in sorted(hist) if t in hist[s]] for t in tags}


def wandb_config(run_file) -> dict:
    out = {}
    for r in finished_records(run_file):
        if r.WhichOneof("record_type") in ("config", "run"):
            items = r.config.update if r.HasField("config") else r.run.config.update
            out.update({i.key: json.loads(i.value_json) for i in items})
    return out


def jsonl_scalars(out_dir) -> dict[str, list[tuple[int, float]]]:
    from gpt_jax.train.metrics import read_metrics
    from gpt_jax.train.tracking import scalars
    out: dict[str, list] = {}
    for row in read_metrics(str(out_dir)):
        for k, v in scalars(row).items():
            out.setdefault(k, []).append((row["step"], v))
    return out


def assert_same_series(got, want, what):
    assert sorted(got) == sorted(want), what
    for tag in want:
        g, w = got[tag], want[tag]
        assert [s for s, _ in g] == [s for s, _ in w], f"{what}: {tag} steps"
        # TensorBoard stores float32
        np.testing.assert_allclose([v for _, v in g], np.float32([v for _, v in w]),
                                   rtol=1e-6, err_msg=f"{what}: {tag}")


# -- the flags ----------------------------------------------------------------------------------

def test_log_to_and_profile_steps_are_checked():
    from gpt_jax.train.profiling import parse_profile_steps
    from gpt_jax.train.tracking import parse_log_to
    assert parse_log_to("tensorboard, wandb") == ("jsonl", "tensorboard", "wandb")
    assert parse_log_to("") == parse_log_to("jsonl") == ("jsonl",)
    assert parse_profile_steps("") is None and parse_profile_steps("10:15") == (10, 15)
    for bad, msg in [(dict(log_to="tensorbord"), "unknown tracker.*'tensorbord'.*choose from"),
                     (dict(profile_steps="10"), "START:END"),
                     (dict(profile_steps="a:b"), "START:END"),
                     (dict(profile_steps="5:5"), "0 <= START < END"),
                     (dict(profile_steps="-1:3"), "0 <= START < END"),
                     (dict(profile_steps="2:9", max_iters=8), "ends after max_iters")]:
        with pytest.raises(ConfigError, match=msg) as e:
            tc_for("out", **bad)
        assert "\n" not in str(e.value)


def test_a_missing_tracker_package_names_the_extra(monkeypatch):
    import importlib.util
    import gpt_jax.train.tracking as tracking
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "wandb" else real(n, *a))
    tracking.check_installed(["jsonl", "tensorboard"])
    with pytest.raises(UserError, match=r"--log_to wandb needs the package wandb.*"
                                        r"pip install 'gpt-jax\[track\]'"):
        tracking.check_installed(["jsonl", "wandb"])


def test_scalars_take_every_number_of_a_row():
    """A key added to a row (e.g. a health metric) reaches the trackers with no change."""
    from gpt_jax.train.tracking import scalars
    assert scalars({"kind": "train", "step": 5, "loss": 2.5, "new_metric": 7, "clipped": True,
                    "note": "x", "norms": {"h_0": 0.5, "h_1": {"attn": 2}}}) == \
        {"train/loss": 2.5, "train/new_metric": 7.0, "train/clipped": 1.0,
         "train/norms/h_0": 0.5, "train/norms/h_1/attn": 2.0}
    assert scalars({"kind": "eval_task", "step": 5, "task": "text", "ppl": 9.5}) == \
        {"eval_task/text/ppl": 9.5}


# -- the trackers in a run ----------------------------------------------------------------------

def test_tensorboard_and_wandb_hold_what_metrics_jsonl_holds(builtin_data, tmp_path,
                                                              offline_wandb):
    """A run to step 4, then a resume from step 2 (--resume_step) to step 6: TensorBoard's
    reader sees exactly metrics.jsonl's scalars (train and eval rows; the re-run steps 3-4
    once, with the resumed run's values); W&B's offline files hold them too, in one run id,
    each step once; both carry the run's config. (eval_task rows: the next test.)"""
    pytest.importorskip("tensorboard", reason="tensorboard's event reader (test extra)")
    pytest.importorskip("tensorboardX", reason="the `track` extra (tensorboardX) is not installed")
    from gpt_jax.train.trainer import Trainer
    out = tmp_path / "out"
    tc = tc_for(out, log_to="tensorboard,wandb")
    Trainer(tc, **QUIET).fit()
    first = jsonl_scalars(out)
    assert {"train/loss", "train/grad_norm", "eval/val_loss"} <= set(first)
    assert_same_series(tensorboard_scalars(str(out / "tensorboard")), first, "tensorboard")
    hist1 = wandb_runs(out)
    assert_same_series(series(hist1, first), first, "wandb")
    run1 = sorted(glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert wandb_config(run1[0])["log_to"] == "tensorboard,wandb"

    Trainer(tc.replace(init_from="resume", resume_step=2, max_iters=6), **QUIET).fit()
    final = jsonl_scalars(out)
    assert [s for s, _ in final["train/loss"]] == [1, 2, 3, 4, 5, 6]
    # the resumed run's own rows replaced steps 3-4 (its `time` differs from the first run's)
    assert final["train/time"][2] != first["train/time"][2]
    assert_same_series(tensorboard_scalars(str(out / "tensorboard")), final,
                       "tensorboard after resume")
    assert len(glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))) == 2
    # W&B: the same run continued; its history only grows, so steps 3-4 were not sent again
    # (W&B keeps the first run's), and every step is in one run file only
    hist = wandb_runs(out)
    assert sorted(hist) == sorted(hist1) + [5, 6]
    assert all(hist[s] == hist1[s] for s in hist1)
    later = {t: [(s, v) for s, v in final[t] if s > 4] for t in final}
    later = {t: v for t, v in later.items() if v}
    assert_same_series(series({s: v for s, v in hist.items() if s > 4}, later), later,
                       "wandb after resume")


def test_profile_steps_writes_a_trace(builtin_data, tmp_path):
    """--profile_steps 1:2 traces the update from step 1 to step 2, and only it: an
    xplane.pb for TensorBoard and a Perfetto trace whose one step marker is 1."""
    import gzip
    from gpt_jax.train.trainer import Trainer
    out = tmp_path / "out"
    Trainer(tc_for(out, max_iters=3, eval_interval=3, profile_steps="1:2"), **QUIET).fit()
    (run,) = glob.glob(str(out / "profile" / "plugins" / "profile" / "*"))
    (xplane,) = glob.glob(os.path.join(run, "*.xplane.pb"))
    assert os.path.getsize(xplane) > 0
    with gzip.open(os.path.join(run, "perfetto_trace.json.gz")) as f:
        events = json.load(f)["traceEvents"]
    assert {e["args"]["step_num"] for e in events if e.get("name") == "train"} == {"1"}


def test_every_row_kind_reaches_the_trackers_and_flush_writes_it(tmp_path, offline_wandb):
    """train, eval and eval_task rows (as the trainer writes them) in TensorBoard and W&B.
    The trainer flushes at each evaluation, before the checkpoint: a run killed after it must
    not leave TensorBoard without the steps the resumed run starts after."""
    pytest.importorskip("tensorboard", reason="tensorboard's event reader (test extra)")
    pytest.importorskip("tensorboardX", reason="the `track` extra (tensorboardX) is not installed")
    from gpt_jax.train.tracking import Trackers
    t = Trackers("tensorboard,wandb", str(tmp_path), {"seed": 1}, 0)
    for s in (1, 2):
        t.log({"kind": "train", "step": s, "loss": 1.0 / s, "tokens": 512 * s})
    t.log({"kind": "eval", "step": 2, "train_loss": 0.4, "val_loss": 0.6, "time": 1.5})
    t.log({"kind": "eval_task", "step": 2, "task": "hellaswag", "n": 10, "acc": 0.3,
           "acc_norm": 0.4, "seconds": 2.0})
    assert tensorboard_scalars(str(tmp_path / "tensorboard")) == {}   # buffered until flush
    t.flush()
    want = jsonl_scalars(tmp_path)
    assert {"eval_task/hellaswag/acc_norm", "eval/val_loss", "train/loss"} <= set(want)
    assert_same_series(tensorboard_scalars(str(tmp_path / "tensorboard")), want,
                       "tensorboard after flush")
    t.close()
    (run,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    hist = wandb_history(run)
    assert_same_series({k: [(s, hist[s][k]) for s in sorted(hist) if k in hist[s]]
                        for k in want}, want, "wandb")
    assert wandb_config(run)["seed"] == 1


def test_a_killed_run_loses_no_step_in_wandb_or_tensorboard(builtin_data, tmp_path,
                                                            offline_wandb):
    """train.py --log_to tensorboard,wandb (offline), SIGKILL a few steps after a
    checkpoint, then --init_from resume to the end: every step of metrics.jsonl is in W&B's
    run files once, with metrics.jsonl's values, and TensorBoard's reader sees the same.
    (Before: W&B's file of the killed run held only the rows of the 32 KiB blocks its service
    had filled, and the resumed run skipped every step handed to W&B before the kill.)"""
    import signal
    import subprocess
    import sys
    import time
    pytest.importorskip("tensorboard", reason="tensorboard's event reader (test extra)")
    pytest.importorskip("tensorboardX", reason="the `track` extra (tensorboardX) is not installed")
    from conftest import ROOT, run_cli
    from gpt_jax.checkpoint.manager import all_steps
    from gpt_jax.train.metrics import read_metrics
    out = tmp_path / "out"
    args = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
            "--batch_size", "4", "--eval_iters", "1", "--warmup_iters", "2", "--lr_decay_iters",
            "1000", "--log_interval", "1", "--eval_interval", "5", "--log_to",
            "tensorboard,wandb", "--out_dir", str(out)]
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args,
                              "--max_iters", "1000"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        t0 = time.monotonic()
        while True:   # a checkpoint, then two more train rows
            assert first.poll() is None and time.monotonic() - t0 < 240, "no checkpoint"
            steps = all_steps(str(out)) if (out / "checkpoints").is_dir() else []
            rows = [r["step"] for r in read_metrics(str(out)) if r.get("kind") == "train"]
            if steps and rows and rows[-1] >= steps[-1] + 2:
                break
            time.sleep(0.02)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    ckpt = all_steps(str(out))[-1]
    killed_at = max(r["step"] for r in read_metrics(str(out)))
    assert killed_at > ckpt
    r = run_cli("train.py", *args, "--init_from", "resume", "--max_iters", ckpt + 7,
                env={k: os.environ[k] for k in os.environ if k.startswith("WANDB_")})
    assert r.returncode == 0, r.stderr[-2000:]
    want = jsonl_scalars(out)
    assert [s for s, _ in want["train/loss"]] == list(range(1, ckpt + 8))
    hist = wandb_runs(out)
    assert sorted(hist) == sorted({s for v in want.values() for s, _ in v})
    assert_same_series(series(hist, want), want, "wandb after a kill")
    assert_same_series(tensorboard_scalars(str(out / "tensorboard")), want,
                       "tensorboard after a kill")
