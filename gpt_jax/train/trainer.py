"""The training loop with its I/O: data, checkpoints, metrics.jsonl, loss.png, progress bar,
MFU, signals. The maths lives in loss.py, optimizer.py, state.py and steps.py; where the
weights come from in init_from.py; train.py is the CLI over this.

    tc = resolve_config("cpu-small", {"max_iters": 100})     # gpt_jax/train/config.py
    Trainer(tc).fit()      # or .evaluate_only()

The same loop runs on one device, a mesh of many, and several processes (hosts): the state
lives on the mesh from --mesh, every process draws the same global batch indices and feeds its
own rows, all processes save and restore checkpoints together (orbax), and only process 0
prints, plots and writes metrics.jsonl.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
import weakref
from typing import Optional

import jax
import numpy as np

import gpt_jax.checkpoint.manager as ckpt
import gpt_jax.data as data_lib
import gpt_jax.evaluation.task_evals as eval_tasks
import gpt_jax.train.start as init_from
import gpt_jax.model.sharding as sh
from gpt_jax.utils.paths import writable_dir
from gpt_jax.errors import CheckpointError, UserError
from gpt_jax.model.flops import flops_per_token, peak_flops
from gpt_jax.train.guard import GuardConfig, bad_batch_steps, guard_to_meta, inject_bad_batch
from gpt_jax.checkpoint.integrity import NonFiniteError, check_savable
from gpt_jax.train.metrics import plot_loss
from gpt_jax.model.gpt import count_params
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.train.profiling import StepProfiler
from gpt_jax.train.end import (TrainingDiverged, diverged, rerun_advice,  # noqa: F401
                             shut, stop_text, write_failed)
from gpt_jax.checkpoint.run_lock import hold_out_dir
from gpt_jax.model.stacking import unstack_tree
from gpt_jax.train.steps import make_eval_step, make_train_step
from gpt_jax.train.tracking import Trackers, check_installed, parse_log_to
from gpt_jax.train.config import TrainConfig

MAX_TO_KEEP = 3


def check_out_dir(tc: TrainConfig) -> None:
    """out_dir can hold what the run writes: eval-only reads only (the directory may be
    read-only); resume needs it to exist (said later) and be writable; a new run creates it."""
    if tc.eval_only:
        writable_dir(tc.out_dir, create=False, probe=False)
    else:
        writable_dir(tc.out_dir, create=tc.init_from != "resume")


def check_batch(tc: TrainConfig, mesh) -> None:
    """The batch's rows split evenly over the mesh's devices and over the processes."""
    sh.check_batch_divides(tc.batch_size, mesh)
    sh.local_rows(tc.batch_size)


class Trainer:
    """Builds the run (init_from.build: the weights, the state on the mesh), the data and the
    steps; fit() trains, evaluate_only() evaluates.

    explicit: the flat TrainConfig keys the user set (train.py passes given_fields(...)); only
    those may conflict with the architecture of weights loaded from elsewhere. Default: the
    keys whose values differ from TrainConfig's defaults.
    """

    def __init__(self, tc: TrainConfig, *, progress: bool = True, log=print,
                 explicit: Optional[set] = None):
        self.main = sh.is_main_process()
        # Only process 0 talks; the others compute (and save their checkpoint shards).
        self.progress = progress and self.main
        self.log = log if self.main else (lambda *a, **k: None)
        self.out_dir = tc.out_dir
        if explicit is None:
            defaults = TrainConfig().to_dict()
            explicit = {k for k, v in tc.to_dict().items() if v != defaults[k]}
        # One line for what can be told from the flags, before out_dir is created or anything
        # downloaded, tokenised or compiled.
        task_specs = eval_tasks.parse_spec(tc.eval_tasks)
        eval_tasks.check_files(task_specs)
        if self.main and not tc.eval_only:
            check_installed(parse_log_to(tc.log_to))
        if tc.init_from != "resume":
            init_from.check_steps_left(tc, 0, self.out_dir)
            init_from.check_init_from(tc.init_from)
        check_out_dir(tc)
        # out_dir is this run's until fit() ends (or close()): before anything reads or writes
        # there, so a second run on it stops here with one line naming this one
        self.lock = hold_out_dir(tc.out_dir, writes=not tc.eval_only, log=self.log)
        try:
            self._build(tc, explicit, task_specs)
        except BaseException:
            self.close()
            raise
        weakref.finalize(self, self.lock.release)

    def _build(self, tc: TrainConfig, explicit: set, task_specs) -> None:
        self.mesh = sh.make_mesh(tc.mesh)
        check_batch(tc, self.mesh)
        self.tx, self.schedule = make_optimizer(tc)
        self.run = dict(remat=tc.remat, scan_layers=tc.scan_layers)  # memory/compile only
        # tc's architecture keys may now come from the weights
        self.tc, self.cfg, self.state, self.shardings, meta = init_from.build(
            tc, self.tx, self.mesh, set(explicit), self.log)
        tc = self.tc
        # a resumed run keeps its schedule (init_from.RUN_KEYS); the opt_state's shape is the same
        self.tx, self.schedule = make_optimizer(tc)
        self.bad_steps = bad_batch_steps()   # tests only: bad batches at these steps
        # the checkpoint step this run continues, and the latest step of this run on disk
        self.resumed_step: Optional[int] = None if meta is None else int(self.state.step)
        self.saved_step: Optional[int] = None
        self._stale: list[int] = []               # steps after resumed_step (--resume_step)
        self.data = data_lib.TokenData(self._data_dir(), block_size=tc.model.block_size,
                                       vocab_size=self.cfg.vocab_size)
        self.elapsed = 0.0
        seed = tc.seed
        if meta is not None:
            self.elapsed = float(meta.get("elapsed", 0.0))
            seed = int(meta.get("sampler", {}).get("seed", seed))
        self.sampler = data_lib.BatchSampler(
            self.data, block_size=tc.model.block_size, batch_size=tc.batch_size,
            accum=tc.gradient_accumulation_steps, seed=seed)
        self.eval_step = make_eval_step(self.cfg, mesh=self.mesh,
                                        param_shardings=self.shardings.params, **self.run)
        # read and encoded now: a bad row is said before training, not at the first eval
        self.task_evals = eval_tasks.TaskEvals(task_specs, self.cfg,
                                               limit=tc.eval_task_limit or None)
        self.stop_signal: Optional[int] = None
        self.trackers: Optional[Trackers] = None   # fit(): metrics.jsonl + --log_to

    def _data_dir(self) -> str:
        """Process 0 prepares the data (if needed) while the others wait, so that processes
        sharing a filesystem do not tokenise into the same files at once; a process that
        still finds nothing (its own filesystem) prepares its own copy."""
        resolve = lambda: data_lib.resolve(self.tc.data, progress=self.progress,
                                           cache_dir=os.path.join(self.out_dir, "data"))
        if jax.process_count() == 1:
            return resolve()
        from jax.experimental import multihost_utils
        d = resolve() if self.main else None
        multihost_utils.sync_global_devices("gpt_jax: data prepared")
        return d or resolve()

    def _global_batch(self, batch: np.ndarray, batch_axis: int = 1) -> jax.Array:
        """The global batch (the same on every process) as one array over the mesh, each
        process giving only its own rows."""
        rows = [slice(None)] * batch.ndim
        rows[batch_axis] = sh.local_rows(batch.shape[batch_axis])
        return sh.make_global_batch(batch[tuple(rows)], self.mesh, batch.shape, batch_axis)

    # -- evaluation --------------------------------------------------------------------------
    def estimate_loss(self, params, step: int) -> dict[str, float]:
        out = {}
        for split in data_lib.SPLITS:
            batches = self.sampler.eval_batches(split, step, self.tc.eval_iters)
            losses = [self.eval_step(params, self._global_batch(b, 0)) for b in batches]
            out[split] = float(np.mean(jax.device_get(losses)))
        return out

    def evaluate_only(self) -> dict[str, float]:
        """The losses (and the --eval_tasks, printed) of the weights; nothing is written."""
        losses = self.estimate_loss(self.state.params, 0)
        self.log(f"eval: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                 f"({self.tc.eval_iters} batches of {self.tc.batch_size} x "
                 f"{self.tc.model.block_size} tokens each)")
        for row in self.task_evals(self.state.params, None):
            self.log(eval_tasks.format_row(row))
        return losses

    # -- checkpoints and metrics -------------------------------------------------------------
    def _append(self, row: dict) -> None:
        if self.trackers is not None:
            self._write("metrics.jsonl", self.trackers.log, row)

    def _write(self, what: str, fn, *args) -> None:
        """metrics.jsonl / loss.png / a tracker's files (TrackerWriteError.what): a failed
        write is one line saying what is wrong (a full disk, a file in the way, ...)."""
        try:
            return fn(*args)
        except OSError as e:
            raise UserError(write_failed(e, getattr(e, "what", what), self.out_dir)) from None

    def save(self, mngr, step: int) -> None:
        """Every process calls this: orbax writes each process's shards and process 0 the
        JSON items. Saved in the GPT-2 layout (unstacked params and Adam moments), only if
        every value is finite; TrainingDiverged otherwise, a one-line CheckpointError when the
        write fails (older steps kept)."""
        params, opt_state = self.state.params, self.state.opt_state
        if self.tc.scan_layers:
            params, opt_state = jax.jit(unstack_tree)((params, opt_state))
        try:
            check_savable(step, params, self.cfg, opt_state)
        except NonFiniteError as e:
            raise diverged(self.out_dir, self.tc.model.dtype,
                           f"non-finite values after the update ({e})", step) from None
        if self._stale:   # resumed from an earlier step (--resume_step): rewritten now
            ckpt.delete_steps_after(mngr, self.resumed_step)
            self.log(f"removed checkpoint step(s) {', '.join(map(str, self._stale))}, after "
                     f"step {self.resumed_step} where this run resumed")
            self._stale = []
        meta = {"rng": np.asarray(jax.random.key_data(self.state.rng)).tolist(),
                "sampler": self.sampler.state(step), "elapsed": self.elapsed,
                "tokens": step * self.tc.tokens_per_step, "train_config": self.tc.to_dict(),
                "data": self.data.dir, "guard": guard_to_meta(self.state.guard)}
        tracker_error = None
        try:   # the trackers' rows up to `step` written first; their failure loses no step
            if self.trackers is not None:
                self.trackers.flush()
        except OSError as e:
            tracker_error = e
        try:
            ckpt.save(mngr, step, params, self.cfg, opt_state=opt_state, meta=meta,
                      checked=True)
        except ckpt.SaveFailed as e:
            raise CheckpointError(f"{e}. {rerun_advice(self.out_dir)}") from None
        self.saved_step = step
        if tracker_error is not None:   # said now that the disk holds `step`
            raise UserError(write_failed(tracker_error, getattr(tracker_error, "what", "--log_to"),
                                         self.out_dir)
                            + f" (step {step} is saved)") from None

    def _stop_requested(self) -> bool:
        """Whether a SIGINT/SIGTERM arrived, agreed by all processes (a signal may reach only
        some of them; they must still stop, and save, at the same step)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            flags = multihost_utils.process_allgather(np.int32(self.stop_signal or 0))
            self.stop_signal = int(np.max(flags)) or None
        return self.stop_signal is not None

    def _on_signal(self, signum, frame):
        self.stop_signal = signum
        # A second Ctrl-C interrupts at once.
        signal.signal(signum, signal.SIG_DFL)

    # -- the loop ----------------------------------------------------------------------------
    def close(self) -> None:
        """Release out_dir (fit() does at its end, also on an error)."""
        self.lock.release()

    def fit(self) -> dict:
        """Train from the state's step to max_iters, evaluating and saving every
        eval_interval steps and at the end. A SIGINT/SIGTERM stops at the next step boundary
        and saves that step (when it trained one). Returns the final step, elapsed time,
        the signal (if any), saved_step (the latest step on disk from this run or the one it
        resumed; None: nothing on disk) and the last eval losses. Releases out_dir at the
        end. The trackers are closed whatever happened, a failed compile too (a W&B run
        left open would swallow the next one)."""
        try:
            out = self._fit()
        except BaseException:
            self._close_trackers(failed=True)
            raise
        else:
            self._close_trackers(failed=False)
        finally:
            self.close()
        return out

    def _fit(self) -> dict:
        tc, state = self.tc, self.state
        start = int(state.step)
        init_from.check_steps_left(tc, start, f"the checkpoint in {self.out_dir}")
        os.makedirs(self.out_dir, exist_ok=True)
        if self.main:   # jsonl rows past `start` dropped; the other trackers alike
            self.trackers = self._write("metrics.jsonl", Trackers, tc.log_to, self.out_dir,
                                        tc.to_dict(), start)
        profiler = self._write("the profile (--profile_steps)", StepProfiler,
                               tc.profile_steps, self.out_dir, start)
        n_params = count_params(self.cfg)
        fpt = flops_per_token(self.cfg, tc.model.block_size,
                              count_params(self.cfg, non_embedding=True))
        peak, peak_src = peak_flops()
        self.log(f"model: {n_params / 1e6:.2f}M parameters; {tc.tokens_per_step:,} tokens/step; "
                 f"{fpt / 1e6:.1f} MFLOP/token; peak {peak / 1e12:.3g} TFLOP/s ({peak_src})")
        self.log(f"mesh: {dict(self.mesh.shape)} over {jax.device_count()} device(s) in "
                 f"{jax.process_count()} process(es); remat={tc.remat} "
                 f"scan_layers={tc.scan_layers}")

        batch = self._train_batch(start)
        t0 = time.perf_counter()
        step_fn = make_train_step(self.cfg, self.tx, self.schedule, mesh=self.mesh,
                                  shardings=self.shardings, grad_clip=tc.grad_clip,
                                  guard=GuardConfig.from_tc(tc), **self.run)
        step_fn = step_fn.lower(state, batch).compile()
        self.log(f"compiled the train step in {time.perf_counter() - t0:.1f}s")

        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        from tqdm import tqdm
        bar = tqdm(total=tc.max_iters, initial=start, unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        last = {}
        self.saved_step = self.resumed_step   # what the disk holds of this run
        mngr = ckpt.manager(self.out_dir, max_to_keep=MAX_TO_KEEP)
        # steps after the resumed one (--resume_step): kept until this run saves its first.
        # A run that did not resume owns no steps here (one written since the start-up check
        # is another run's: never deleted; saving over it is refused).
        self._stale = ([s for s in mngr.all_steps() if s > start]
                       if self.resumed_step is not None else [])
        try:
            step = start
            if start == 0:
                last.update(self._eval_row(0))
            t_mark, step_mark, run_t0 = time.perf_counter(), start, time.perf_counter()
            elapsed0 = self.elapsed
            while step < tc.max_iters and not self._stop_requested():
                profiler.before(step)
                state, metrics = step_fn(state, batch)
                self.state = state
                if step + 1 < tc.max_iters:   # sample the next batch while the device works
                    batch = self._train_batch(step + 1)
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
                    raise diverged(self.out_dir, self.tc.model.dtype,
                                   f"non-finite loss ({m['loss']}) or gradient norm "
                                   f"({m['grad_norm']})", step + 1)
                step += 1
                profiler.after(step)
                self.elapsed = elapsed0 + time.perf_counter() - run_t0
                bar.update(1)
                if m["skip"]:
                    self._skipped(step, m)
                if step % tc.log_interval == 0 or step == tc.max_iters:
                    now = time.perf_counter()
                    tps = (step - step_mark) * tc.tokens_per_step / max(now - t_mark, 1e-9)
                    row = {"kind": "train", "step": step, "loss": m["loss"], "lr": m["lr"],
                           "grad_norm": m["grad_norm"], "tokens": step * tc.tokens_per_step,
                           "tokens_per_s": tps, "mfu": tps * fpt / peak,
                           "time": round(self.elapsed, 3)}
                    row.update({k: v for k, v in m.items() if k not in row and k != "skip"})
                    self._append(row)
                    bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{tps:,.0f}",
                                    mfu=f"{100 * row['mfu']:.1f}%")
                    t_mark, step_mark = now, step
                if step % tc.eval_interval == 0 or step == tc.max_iters:
                    last.update(self._eval_row(step))
                    self.save(mngr, step)
                    t_mark, step_mark = time.perf_counter(), step
            if self.stop_signal is not None:
                self._stop_message(mngr, step, start, bar)
        except BaseException:
            profiler.close(quiet=True)
            shut(bar, mngr, handlers, quiet=True)   # the first error is the one to see
            raise
        profiler.close()
        shut(bar, mngr, handlers, quiet=False)
        return {"step": step, "elapsed": self.elapsed, "stopped_by_signal": self.stop_signal,
                "saved_step": self.saved_step, **last}

    def _close_trackers(self, failed: bool) -> None:
        trackers, self.trackers = self.trackers, None
        if trackers is not None:
            try:
                self._write("metrics.jsonl", trackers.close, failed)
            except Exception:  # noqa: BLE001 - after an error, that error is the one to see
                if not failed:
                    raise

    def _train_batch(self, step: int) -> jax.Array:
        batch = self.sampler.train_batch(step)
        if step in self.bad_steps:
            batch = inject_bad_batch(batch, step, self.cfg.n_real_vocab)
        return self._global_batch(batch)

    def _skipped(self, step: int, m: dict) -> None:
        """The spike guard skipped update `step`: a metrics row and a line."""
        self._append({"kind": "skip", "step": step, "loss": m["loss"],
                      "grad_norm": m["grad_norm"], "loss_z": m["loss_z"],
                      "grad_z": m["grad_z"], "skipped": m["skipped"]})
        self._say(f"step {step}: update skipped (loss {m['loss']:.4f}, z {m['loss_z']:.1f}; "
                  f"grad norm {m['grad_norm']:.4g}, z {m['grad_z']:.1f})")

    def _stop_message(self, mngr, step: int, start: int, bar) -> None:
        """After a signal: save the current step when it trained one, and say what is on
        disk, exactly."""
        trained = self.saved_step != step and step > start
        if trained:
            self.save(mngr, step)
        msg = stop_text(self.stop_signal, self.out_dir, step, saved=self.saved_step == step,
                        just_saved=trained)
        if self.main:
            bar.write(msg, file=sys.stderr)

    def _eval_row(self, step: int) -> dict:
        losses = self.estimate_loss(self.state.params, step)
        if not all(math.isfinite(v) for v in losses.values()):
            # not written to metrics.jsonl or plotted, and never saved
            raise diverged(self.out_dir, self.tc.model.dtype, f"non-finite eval loss (train "
                           f"{losses['train']}, val {losses['val']})", step)
        self._append({"kind": "eval", "step": step, "train_loss": losses["train"],
                      "val_loss": losses["val"], "time": round(self.elapsed, 3)})
        self._say(f"step {step}: train loss {losses['train']:.4f}, val loss "
                  f"{losses['val']:.4f}")
        for row in self.task_evals(self.state.params, step):   # every process scores
            self._append(row)
            self._say(eval_tasks.format_row(row))
        if self.main:
            self._write("loss.png", plot_loss, self.out_dir)
        return {"train_loss": losses["train"], "val_loss": losses["val"]}

    def _say(self, msg: str) -> None:
        """One line above the progress bar (or logged, without one)."""
        if self.progress:
            from tqdm import tqdm
            tqdm.write(msg)
        else:
            self.log(msg)
