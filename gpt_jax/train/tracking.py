"""Where a run's metrics go (--log_to): out_dir/metrics.jsonl always, TensorBoard
(tensorboardX, no TensorFlow) and Weights & Biases on request. Every row the trainer writes
(train, eval, eval_task) goes to all of them: its numeric keys become scalars named
`kind/key` (`eval_task/TASK/key`) at the row's step, so a key added to a row reaches every
tracker with no change here.

    trackers = Trackers("jsonl,tensorboard", out_dir, tc.to_dict(), start)   # process 0
    trackers.log({"kind": "train", "step": 5, "loss": 3.2, ...})
    trackers.flush()     # before each checkpoint: every tracker's rows written
    trackers.close()

Resume (start > 0): metrics.jsonl drops its rows past `start`; TensorBoard starts a new event
file in the same logdir whose restart marker (tensorboardX's purge_step) hides the old files'
events past `start` from readers; W&B continues the same run (its id is kept in
out_dir/wandb/gpt_jax_run.json) and, as its history only grows, skips the steps it already
holds and sends again, from metrics.jsonl, the rows up to `start` it does not. A run from
step 0 starts all three afresh.

W&B and a kill: W&B's service writes a run's file (`run-ID.wandb`, which `wandb sync`
uploads) in 32 KiB blocks and completes it only when the run finishes; a killed process
leaves it without its last rows. So flush() finishes the W&B run and waits for W&B's service
to write (online: upload) everything (`wandb.teardown()`), and the next row continues the
same run in a new run directory (`resume="allow"`: one more directory per checkpoint; about
0.5 s offline; `wandb.teardown()` ends W&B's service for the whole process). What
W&B holds for sure is the step of the last flush (`last_step` in gpt_jax_run.json), not what
was handed to it. A resumed run sets aside the offline directory a killed run left open (to
out_dir/wandb/interrupted/, out of `wandb sync`'s way): every row of it past that step is
sent again from metrics.jsonl or trained again.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from typing import Optional

from gpt_jax.errors import ConfigError, UserError
from gpt_jax.train.metrics import append_metrics, read_metrics, restart_metrics

TRACKERS = ("jsonl", "tensorboard", "wandb")
PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb"}   # import names
EXTRA = "pip install 'gpt-jax[track]'"
TB_DIR = "tensorboard"          # out_dir/tensorboard: the --logdir of `tensorboard`
WANDB_DIR = "wandb"             # out_dir/wandb: W&B's run directories (wandb makes it)
WANDB_STATE = "gpt_jax_run.json"   # in WANDB_DIR: {"id", "last_step", "open"} for resume
WANDB_ASIDE = "interrupted"     # in WANDB_DIR: the offline run directories of killed runs
WHAT = {"tensorboard": "TensorBoard's events (--log_to tensorboard)",
        "wandb": "the W&B run's files (--log_to wandb)"}


class TrackerWriteError(OSError):
    """A tracker could not write its files: the OSError, with `what` naming the tracker's
    files for the one-line message the trainer makes of it (train/end.py: write_failed)."""

    def __init__(self, name: str, e: OSError, where: str):
        super().__init__(e.errno, e.strerror, e.filename or where)
        self.what = WHAT[name]


def _write(name: str, where: str, fn, *args):
    """fn(*args), its OSError a TrackerWriteError of tracker `name` (writing under `where`,
    the tracker's directory, when the error names no file: a buffered write's)."""
    try:
        return fn(*args)
    except TrackerWriteError:
        raise
    except OSError as e:
        raise TrackerWriteError(name, e, where) from None
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


def read_state(path: str, start: int) -> dict:
    """gpt_jax_run.json: {"id": W&B run id, "last_step": the step W&B holds every row up to,
    "open": the run directory of a W&B run not yet finished}; {} when there is none. A
    damaged one is one line saying what it holds and what to do."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    fix = (f"remove it to continue in a new W&B run (the rows up to step {start} are sent to it "
           f"again from metrics.jsonl), or write it back as {{\"id\": \"RUN_ID\", "
           f"\"last_step\": STEP}}")
    try:
        state = json.loads(text)
    except ValueError:
        raise UserError(f"{path} is damaged (not JSON); it holds the id of the W&B run this "
                        f"run continues: {fix}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a JSON {type(state).__name__}, not the object "
                        f"{{\"id\", \"last_step\"}} of the W&B run this run continues: {fix}")
    run_id, last, open_ = state.get("id"), state.get("last_step", -1), state.get("open")
    if not isinstance(run_id, str) or not run_id.strip() or "/" in run_id:
        raise UserError(f"{path}: \"id\" must be a W&B run id (a string), got {run_id!r}: "
                        f"{fix}")
    if not isinstance(last, int) or isinstance(last, bool) or last < -1:
        raise UserError(f"{path}: \"last_step\" must be a step (an integer, -1: none), got "
                        f"{last!r}: {fix}")
    if open_ is not None and not isinstance(open_, str):
        open_ = None
    return {"id": run_id, "last_step": last, "open": open_}


class WandB:
    """One W&B run per out_dir (online, or offline with WANDB_MODE=offline: then
    `wandb sync out_dir/wandb/offline-run-*` uploads it). WANDB_PROJECT names the project
    (default gpt_jax); the other WANDB_* variables apply as usual. See the module's
    docstring for flush() and resume."""

    def __init__(self, out_dir: str, config: dict, start: int):
        import wandb
        self.wandb, self.out_dir, self.config = wandb, out_dir, config
        self.root = os.path.join(out_dir, WANDB_DIR)
        self.state_file = os.path.join(self.root, WANDB_STATE)
        state = read_state(self.state_file, start) if start > 0 else {}
        os.makedirs(self.root, exist_ok=True)
        self.id = state.get("id") or new_run_id()
        # every step up to `held` is in W&B's finished files (or on its server); rows at or
        # below `skip` are not sent (W&B's history only grows)
        self.held = self.skip = self.sent = int(state.get("last_step", -1))
        self.run = None
        self.open_dir: Optional[str] = None
        self._set_aside(state.get("open"))
        self._open()   # now: no login or no network is said before any training
        if start > 0:
            try:   # online: the step W&B's server expects next (offline: 0)
                self.skip = max(self.skip, int(self.run.step) - 1)
            except Exception:  # noqa: BLE001 - a figure W&B may not give: resend then
                pass
            for row in read_metrics(out_dir):   # what W&B lacks up to the checkpoint
                if row.get("step", -1) <= start and "kind" in row:
                    self.log(int(row["step"]), scalars(row))

    def _set_aside(self, open_dir: Optional[str]) -> None:
        """The offline run directory a killed run left unfinished: its rows past `held` are
        sent again, so `wandb sync` must not upload it too."""
        if not open_dir or not os.path.basename(open_dir).startswith("offline-run-"):
            return
        path = os.path.join(self.root, os.path.basename(open_dir))
        if os.path.isdir(path):
            os.makedirs(os.path.join(self.root, WANDB_ASIDE), exist_ok=True)
            os.replace(path, os.path.join(self.root, WANDB_ASIDE, os.path.basename(path)))

    def _open(self) -> None:
        try:
            self.run = self.wandb.init(
                project=os.environ.get("WANDB_PROJECT", "gpt_jax"), id=self.id,
                resume="allow", dir=self.out_dir, config=self.config,
                name=os.path.basename(os.path.abspath(self.out_dir)),
                settings=self.wandb.Settings(console="off", save_code=False))
        except OSError:   # its run directory: said as any tracker's failed write
            raise
        except Exception as e:  # noqa: BLE001 - no login, no network: say it in one line
            msg = " ".join(str(e).split())
            raise UserError(f"W&B could not start a run ({type(e).__name__}: {msg}); run "
                            f"`wandb login`, or set WANDB_MODE=offline") from None
        self.open_dir = os.path.basename(os.path.dirname(self.run.settings.sync_file))
        self._save()

    def _save(self) -> None:
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"id": self.id, "last_step": self.held, "open": self.open_dir}, f)
        os.replace(tmp, self.state_file)

    def log(self, step: int, values: dict[str, float]) -> None:
        if step <= self.skip:
            return
        if self.run is None:
            self._open()
        self.run.log(values, step=step)
        self.sent = max(self.sent, step)

    def _finish(self, exit_code: int) -> None:
        """Finish the open run and wait until W&B's service has written (online: uploaded)
        all of it: `wandb.teardown()` returns once the service process has exited."""
        run, self.run = self.run, None
        try:
            run.finish(exit_code=exit_code)
            self.wandb.teardown()
        except SystemExit as e:   # teardown exits with the service's failed status
            raise UserError(f"W&B's service failed (exit status {e.code}) while writing the "
                            f"run in {self.root}; see its logs there (debug-internal.log)") \
                from None
        self.held = self.skip = max(self.held, self.sent)
        self.open_dir = None
        self._save()

    def flush(self) -> None:
        if self.run is not None:
            self._finish(0)

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            self._finish(1 if failed else 0)


class Trackers:
    """metrics.jsonl plus the trackers of --log_to, for a run that starts at `start` (0: a
    new run; else the restored step). Only process 0 makes one."""

    def __init__(self, log_to: str, out_dir: str, config: dict, start: int):
        names = parse_log_to(log_to)
        check_installed(names)
        self.out_dir = out_dir
        kinds = {"tensorboard": TensorBoard, "wandb": WandB}
        self.trackers: list[tuple[str, object]] = []
        try:
            for n in names[1:]:
                self.trackers.append((n, _write(n, self._dir(n), kinds[n], out_dir, config,
                                                start)))
            # after the trackers: one that cannot start leaves metrics.jsonl as it was
            restart_metrics(out_dir, start)
        except BaseException:
            self.close(failed=True)
            raise

    def _dir(self, name: str) -> str:
        return os.path.join(self.out_dir, TB_DIR if name == "tensorboard" else WANDB_DIR)

    def log(self, row: dict) -> None:
        """metrics.jsonl first: a tracker that fails (TrackerWriteError) loses no row there."""
        append_metrics(self.out_dir, row)
        values = scalars(row)
        for n, t in self.trackers:
            _write(n, self._dir(n), t.log, int(row["step"]), values)

    def flush(self) -> None:
        """Everything logged so far written by each tracker (before a checkpoint: a run
        killed after it resumes there, and the trackers must already hold the steps up to
        it); waits for W&B's service."""
        for n, t in self.trackers:
            _write(n, self._dir(n), t.flush)

    def close(self, failed: bool = False) -> None:
        """Flush and close each tracker (all of them, even when one fails)."""
        trackers, self.trackers = self.trackers, []
        errors = []
        for n, t in trackers:
            try:
                _write(n, self._dir(n), t.close, failed)
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        if errors and not failed:
            raise errors[0]
