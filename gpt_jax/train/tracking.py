"""Where a run's metrics go (--log_to): out_dir/metrics.jsonl always, TensorBoard
(tensorboardX, no TensorFlow) and Weights & Biases on request. Every row the trainer writes
(train, eval, eval_task) goes to all of them: its numeric keys become scalars named
`kind/key` (`eval_task/TASK/key`) at the row's step, so a key added to a row reaches every
tracker with no change here.

    trackers = Trackers("jsonl,tensorboard", out_dir, tc.to_dict(), start)   # process 0
    trackers.log({"kind": "train", "step": 5, "loss": 3.2, ...})
    trackers.close()

Resume (start > 0): metrics.jsonl drops its rows past `start`; TensorBoard starts a new event
file in the same logdir whose restart marker (tensorboardX's purge_step) hides the old files'
events past `start` from readers; W&B continues the same run (its id is kept in out_dir/wandb/gpt_jax_run.json) and,
as its history only grows, skips the steps it already holds. A run from step 0 starts all
three afresh.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time

from gpt_jax.errors import ConfigError, UserError
from gpt_jax.train.metrics import append_metrics, restart_metrics

TRACKERS = ("jsonl", "tensorboard", "wandb")
PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb"}   # import names
EXTRA = "pip install 'gpt-jax[track]'"
TB_DIR = "tensorboard"          # out_dir/tensorboard: the --logdir of `tensorboard`
WANDB_DIR = "wandb"             # out_dir/wandb: W&B's run directories (wandb makes it)
WANDB_STATE = "gpt_jax_run.json"   # in WANDB_DIR: {"id", "last_step"} for resume
NOT_SCALARS = ("kind", "step", "task")   # row keys that name a row rather than measure


def parse_log_to(spec: str) -> tuple[str, ...]:
    """'jsonl,tensorboard,wandb' -> the trackers, jsonl always first; a one-line error for an
    unknown name."""
    if not isinstance(spec, str):
        raise ConfigError(f"log_to must be a comma-separated string such as "
                          f"jsonl,tensorboard, got {spec!r}")
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in TRACKERS]
    if bad:
        raise ConfigError(f"log_to: unknown tracker(s) {', '.join(map(repr, bad))}; choose from "
                          f"{', '.join(TRACKERS)} (comma-separated; jsonl is always on)")
    return tuple(dict.fromkeys(["jsonl", *names]))


def check_installed(names) -> None:
    """Each tracker's package imports, or one line naming the extra that brings it."""
    for name in names:
        pkg = PACKAGES.get(name)
        if pkg and importlib.util.find_spec(pkg) is None:
            raise UserError(f"--log_to {name} needs the package {pkg}, which is not installed: "
                            f"{EXTRA}")


def scalars(row: dict) -> dict[str, float]:
    """A metrics.jsonl row's numbers as tracker scalars: {"train/loss": 3.2, ...};
    eval_task rows are named by their task too (eval_task/hellaswag/acc), and a dict value
    (e.g. per-layer norms) gives one scalar per entry (train/grad_norms/h_0). Strings and
    lists are not scalars."""
    prefix = row["kind"] + (f"/{row['task']}" if "task" in row else "")
    out: dict[str, float] = {}

    def add(name, v):
        if isinstance(v, dict):
            for k, x in v.items():
                add(f"{name}/{k}", x)
        elif isinstance(v, (int, float)):
            out[name] = float(v)

    for k, v in row.items():
        if k not in NOT_SCALARS:
            add(f"{prefix}/{k}", v)
    return out


class TensorBoard:
    """Event files in out_dir/tensorboard, written by tensorboardX's synchronous
    EventsWriter (SummaryWriter queues events for a thread, and its flush() does not wait for
    the queue: a checkpoint could get ahead of the events). One event per row."""

    def __init__(self, out_dir: str, config: dict, start: int):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.summary import text
        self.Event = Event
        logdir = os.path.join(out_dir, TB_DIR)
        if start == 0:   # a new run: no events of an earlier one under the same logdir
            shutil.rmtree(logdir, ignore_errors=True)
        os.makedirs(logdir, exist_ok=True)
        # named events.out.tfevents.<seconds>.<host>.<start>: readers load files in name order
        self.writer = EventsWriter(os.path.join(logdir, "events"), f".{start:012d}")
        if start:
            # a restart marker (what SummaryWriter(purge_step=) writes): readers drop the
            # earlier files' events at steps >= start + 1, which this run writes again (the
            # rows at `start` itself came before its checkpoint: kept)
            self.writer.write_event(Event(wall_time=time.time(), step=start + 1,
                                          session_log=SessionLog(status=SessionLog.START)))
        table = "\n".join(f"| {k} | {v!r} |" for k, v in config.items())
        self._write(start, text("config", f"| key | value |\n|---|---|\n{table}"))
        self.writer.flush()

    def _write(self, step: int, summary) -> None:
        self.writer.write_event(self.Event(wall_time=time.time(), step=step, summary=summary))

    def log(self, step: int, values: dict[str, float]) -> None:
        from tensorboardX.proto.summary_pb2 import Summary
        self._write(step, Summary(value=[Summary.Value(tag=k, simple_value=v)
                                         for k, v in values.items()]))

    def flush(self) -> None:
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def new_run_id() -> str:
    """8 characters of [a-z0-9], as W&B's own run ids."""
    import secrets
    import string
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandB:
    """One W&B run per out_dir (online, or offline with WANDB_MODE=offline: then
    `wandb sync out_dir/wandb/offline-run-*` uploads it). WANDB_PROJECT names the project
    (default gpt_jax); the other WANDB_* variables apply as usual."""

    def __init__(self, out_dir: str, config: dict, start: int):
        import wandb
        root = os.path.join(out_dir, WANDB_DIR)
        self.state_file = os.path.join(root, WANDB_STATE)
        state = {}
        if start > 0 and os.path.isfile(self.state_file):
            with open(self.state_file) as f:
                state = json.load(f)
        os.makedirs(root, exist_ok=True)
        # the steps W&B already holds: its history only grows, so they are not sent again
        self.done = int(state.get("last_step", -1))
        self.last = self.done
        self.id = state.get("id") or new_run_id()
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "gpt_jax"), id=self.id,
                resume="allow", dir=out_dir, config=config,
                name=os.path.basename(os.path.abspath(out_dir)),
                settings=wandb.Settings(console="off", save_code=False))
        except Exception as e:  # noqa: BLE001 - no login, no network: say it in one line
            msg = " ".join(str(e).split())
            raise UserError(f"W&B could not start a run ({type(e).__name__}: {msg}); run "
                            f"`wandb login`, or set WANDB_MODE=offline") from None
        self._save()

    def _save(self) -> None:
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"id": self.id, "last_step": self.last}, f)
        os.replace(tmp, self.state_file)

    def log(self, step: int, values: dict[str, float]) -> None:
        if step <= self.done:
            return
        self.run.log(values, step=step)
        if step > self.last:
            self.last = step
            self._save()

    def flush(self) -> None:
        pass   # run.log hands each row to W&B's service process at once

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class Trackers:
    """metrics.jsonl plus the trackers of --log_to, for a run that starts at `start` (0: a
    new run; else the restored step). Only process 0 makes one."""

    def __init__(self, log_to: str, out_dir: str, config: dict, start: int):
        names = parse_log_to(log_to)
        check_installed(names)
        self.out_dir = out_dir
        restart_metrics(out_dir, start)
        kinds = {"tensorboard": TensorBoard, "wandb": WandB}
        self.trackers = []
        try:
            for n in names[1:]:
                self.trackers.append(kinds[n](out_dir, config, start))
        except BaseException:
            self.close(failed=True)
            raise

    def log(self, row: dict) -> None:
        append_metrics(self.out_dir, row)
        values = scalars(row)
        for t in self.trackers:
            t.log(int(row["step"]), values)

    def flush(self) -> None:
        """Everything logged so far onto the disk (before a checkpoint: a run killed after it
        resumes there, and the trackers must already hold the steps up to it)."""
        for t in self.trackers:
            t.flush()

    def close(self, failed: bool = False) -> None:
        """Flush and close each tracker (all of them, even when one fails)."""
        trackers, self.trackers = self.trackers, []
        errors = []
        for t in trackers:
            try:
                t.close(failed)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors and not failed:
            raise errors[0]
