"""The training loop with its I/O: config files, data, checkpoints, metrics.jsonl, loss.png,
progress bar, MFU, signals. The maths lives in gpt_jax/train.py; train.py is the CLI over this.

    tc = resolve_config("cpu-small", {"max_iters": 100})
    Trainer(tc).fit()      # or .evaluate_only()

The same loop runs on one device, a mesh of many, and several processes (hosts): the state
lives on the mesh from --mesh, every process draws the same global batch indices and feeds its
own rows, all processes save and restore checkpoints together (orbax), and only process 0
prints, plots and writes metrics.jsonl.
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
from typing import Any, Optional

import jax
import numpy as np

from gpt_jax import checkpoint as ckpt
from gpt_jax import data as data_lib
from gpt_jax import sharding as sh
from gpt_jax.config import GPTConfig
from gpt_jax.errors import CheckpointError, ConfigError, UserError
from gpt_jax.cli import writable_dir
from gpt_jax.hf import KNOWN_MODELS, from_hf, hub_name_ok
from gpt_jax.model import count_params
from gpt_jax.train import (TRAIN_PRESETS, TrainConfig, TrainState, abstract_state,
                           checkpoint_layout, flops_per_token, make_eval_step, make_optimizer,
                           make_train_step, new_state, place_params, place_state,
                           state_shardings)

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
MAX_TO_KEEP = 3


class TrainingDiverged(UserError):
    """The loss or the gradient norm became NaN or infinite."""


# -- configuration ---------------------------------------------------------------------------

def load_config_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"config file {path} {what}; pass a built-in config "
                          f"({', '.join(TRAIN_PRESETS)}) or a .json/.toml file")
    try:
        if path.endswith(".toml"):
            import tomllib
            with open(path, "rb") as f:
                d = tomllib.load(f)
        elif path.endswith(".json"):
            with open(path) as f:
                d = json.load(f)
        else:
            raise ConfigError(f"config file {path} must end in .json or .toml")
    except (ValueError, OSError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ConfigError(f"cannot parse config file {path}: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold a table/object of train.py keys")
    return d


def _base_config(config: str) -> dict[str, Any]:
    base = dict(TRAIN_PRESETS[config]) if config in TRAIN_PRESETS else load_config_file(config)
    fields = TrainConfig.fields()
    unknown = sorted(set(base) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config {config}; allowed: "
                          f"{', '.join(fields)}")
    return base


def resolve_config(config: str = "cpu-small", overrides: Optional[dict] = None) -> TrainConfig:
    """defaults < --config (a built-in name or a .json/.toml file) < flags (overrides)."""
    fields = TrainConfig.fields()
    merged = {**_base_config(config),
              **{k: v for k, v in (overrides or {}).items() if v is not None}}
    for k, v in merged.items():  # TOML/JSON give ints for floats like 1: accept them
        if fields[k].type == "float" and isinstance(v, int) and not isinstance(v, bool):
            try:
                merged[k] = float(v)
            except OverflowError:
                raise ConfigError(f"{k} must be a finite number, got {v}") from None
    try:
        return TrainConfig(**merged)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def given_fields(config: str = "cpu-small", overrides: Optional[dict] = None) -> set[str]:
    """The TrainConfig fields the user set: flags, and the keys of --config (a file, or a
    built-in preset). Only these may conflict with a checkpoint's architecture."""
    return set(_base_config(config)) | {k for k, v in (overrides or {}).items() if v is not None}


def format_config(tc: TrainConfig) -> str:
    return "\n".join(f"  {k:<28} {v!r}" for k, v in tc.to_dict().items())


def arch_summary(tc: TrainConfig) -> str:
    return (f"n_layer={tc.n_layer} n_head={tc.n_head} n_embd={tc.n_embd} "
            f"vocab_size={tc.vocab_size} bias={tc.bias} block_size={tc.block_size}")


# -- MFU -------------------------------------------------------------------------------------

# Dense bf16 peak FLOP/s per chip by device_kind substring (vendor datasheets, no sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12,
              "L4": 121e12, "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
              "TPU v6": 918e12, "TPU v5p": 459e12, "TPU v5": 197e12, "TPU v4": 275e12}


@functools.lru_cache(maxsize=1)
def peak_flops() -> tuple[float, str]:
    """(FLOP/s, where it comes from): the datasheet table for known accelerators, else a
    timed float32 matmul on this machine (CPUs: XLA's matmul speed is the practical peak)."""
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return flops * jax.device_count(), f"{kind} datasheet"
    from gpt_jax.timing import measure_matmul_flops
    timing, work = measure_matmul_flops(2048, repeats=3, warmup=1)
    # the fastest repeat: a busy machine slows some repeats, never speeds one up
    return work / timing.min * jax.device_count(), f"measured 2048^3 matmul on {kind}"


# -- metrics.jsonl and loss.png -------------------------------------------------------------

def read_metrics(out_dir: str) -> list[dict]:
    path = os.path.join(out_dir, METRICS)
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by a kill
    return rows


def truncate_metrics(out_dir: str, step: int) -> None:
    """Drop rows beyond `step` (a resumed run writes them again), atomically."""
    path = os.path.join(out_dir, METRICS)
    rows = [r for r in read_metrics(out_dir) if r.get("step", 0) <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


def plot_loss(out_dir: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_metrics(out_dir)
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.5,
                label="train (batch)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", ms=3,
                label="train (eval)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "s-", ms=3,
                label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(os.path.basename(os.path.abspath(out_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = os.path.join(out_dir, "loss.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, os.path.join(out_dir, LOSS_PLOT))


# -- the trainer -----------------------------------------------------------------------------

ARCHITECTURE = ("n_layer", "n_head", "n_embd", "vocab_size", "bias")   # + block_size


class Trainer:
    """Builds the model state (scratch, resume or HF weights), the data and the steps.

    explicit: the TrainConfig fields the user set (train.py passes given_fields(...)); only
    those may conflict with the architecture of weights loaded from elsewhere. Default: the
    fields whose values differ from TrainConfig's defaults.
    """

    def __init__(self, tc: TrainConfig, *, progress: bool = True, log=print,
                 explicit: Optional[set] = None):
        self.main = sh.is_main_process()
        # Only process 0 talks; the others compute (and save their checkpoint shards).
        self.tc, self.progress = tc, progress and self.main
        self.log = log if self.main else (lambda *a, **k: None)
        self.out_dir = tc.out_dir
        if explicit is None:
            defaults = TrainConfig()
            explicit = {k for k in TrainConfig.fields() if getattr(tc, k) != getattr(defaults, k)}
        self.explicit = set(explicit)
        # One line for what can be told from the flags, before out_dir is created or anything
        # downloaded, tokenised or compiled.
        if tc.init_from != "resume":
            self._check_steps_left(0, self.out_dir)
            self._check_source(tc.init_from)
        if tc.eval_only:   # reads only: the directory may be read-only
            writable_dir(self.out_dir, create=False, probe=False)
        else:              # resume: it must exist (said below) and be writable
            writable_dir(self.out_dir, create=tc.init_from != "resume")
        self.mesh = sh.make_mesh(tc.mesh)
        sh.check_batch_divides(tc.batch_size, self.mesh)
        sh.local_rows(tc.batch_size)  # each process feeds an equal share of the rows
        self.tx, self.schedule = make_optimizer(tc)
        self.run = dict(remat=tc.remat, scan_layers=tc.scan_layers)  # memory/compile only
        self.resumed_step: Optional[int] = None   # the checkpoint step this run continues
        self.saved_step: Optional[int] = None     # the latest step of this run on disk
        self._stale: list[int] = []               # steps after resumed_step (--resume_step)
        self.cfg, self.state, meta = self._model(tc)
        tc = self.tc   # the architecture fields may now come from the weights
        self.data = data_lib.TokenData(self._data_dir(), block_size=tc.block_size,
                                       vocab_size=self.cfg.vocab_size)
        self.elapsed = 0.0
        seed = tc.seed
        if meta is not None:
            self.elapsed = float(meta.get("elapsed", 0.0))
            seed = int(meta.get("sampler", {}).get("seed", seed))
        self.sampler = data_lib.BatchSampler(
            self.data, block_size=tc.block_size, batch_size=tc.batch_size,
            accum=tc.gradient_accumulation_steps, seed=seed)
        self.eval_step = make_eval_step(self.cfg, mesh=self.mesh,
                                        param_shardings=self.shardings.params, **self.run)
        self.stop_signal: Optional[int] = None

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

    # -- where the weights come from ---------------------------------------------------------
    def _adopt_architecture(self, found: GPTConfig, source: str,
                            window: Optional[int] = None) -> GPTConfig:
        """Take the architecture from weights loaded from `source` (a checkpoint, an HF dir):
        a field the user set that differs is an error; the rest are replaced in self.tc.
        block_size is the training window: at most the model's context; by default `window`
        (the resumed run's) or the model's context. Returns the model config."""
        tc = self.tc
        conflicts = [f"{k}: {getattr(found, k)} vs {getattr(tc, k)}" for k in ARCHITECTURE
                     if k in self.explicit and getattr(tc, k) != getattr(found, k)]
        if "block_size" in self.explicit and tc.block_size > found.block_size:
            conflicts.append(f"block_size: {found.block_size} vs {tc.block_size} (the training "
                             f"window can be at most the model's context)")
        if conflicts:
            raise CheckpointError(
                f"the weights from {source} do not match the architecture flags given "
                f"(weights vs flags: {'; '.join(conflicts)}); drop those flags: the "
                f"architecture comes from the weights")
        block = tc.block_size if "block_size" in self.explicit else \
            min(window or found.block_size, found.block_size)
        self.tc = tc.replace(block_size=block, **{k: getattr(found, k) for k in ARCHITECTURE})
        return found.replace(dropout=tc.dropout, dtype=tc.dtype)

    def _check_steps_left(self, start: int, where: str) -> None:
        """A run with nothing to train is an error, said before anything compiles."""
        tc = self.tc
        if tc.eval_only or tc.max_iters > start:
            return
        if start == 0:
            raise ConfigError("--max_iters 0 trains nothing: pass --max_iters N (optimizer "
                              "steps), or --eval_only true to only evaluate")
        raise ConfigError(f"{where} is at step {start} and --max_iters is {tc.max_iters}: "
                          f"nothing to train; pass a --max_iters above {start} to continue "
                          f"(--max_iters counts steps from the start of the run)")

    @staticmethod
    def _check_source(source: str) -> None:
        if source in ("scratch", "resume") or os.path.isdir(source) or hub_name_ok(source):
            return
        raise ConfigError(
            f"--init_from {source!r} is not scratch, resume, a directory (a train.py out_dir "
            f"or a Hugging Face GPT-2 dir), a known model name ({', '.join(KNOWN_MODELS)}) or "
            f"an org/name hub id")

    def _load_weights(self, source: str) -> tuple[dict, GPTConfig]:
        """(params, cfg) from another run's out_dir (its latest checkpoint) or a Hugging Face
        GPT-2 dir or hub name; anything else is a one-line error before any download."""
        if os.path.isdir(ckpt.checkpoint_dir(source)):
            r = ckpt.restore(source, step_hint=f"export one with python -m gpt_jax.hf export "
                                               f"{source} HF_DIR --step N")
            self.log(f"initialised from {source} (step {r['step']}), a fresh optimizer")
            return r["params"], r["config"]
        params, cfg = from_hf(source)
        self.log(f"initialised from {source}")
        return params, cfg

    def _model(self, tc: TrainConfig):
        """(model cfg, TrainState on the mesh, restored checkpoint meta or None). Also sets
        self.shardings (and self.tc's architecture fields when the weights come from a
        checkpoint or an HF dir). Checkpoints hold the GPT-2 layout on whatever mesh saved
        them: they are restored straight into this mesh's shards, then put in the run
        layout."""
        scan = tc.scan_layers
        if tc.init_from == "resume":
            return self._resume(tc)
        # A new run never writes over an out_dir's checkpoints (checked before any HF download).
        existing = None if tc.eval_only else ckpt.latest_step(self.out_dir)
        if existing is not None:
            how = ("continue with --init_from resume, or pass another --out_dir (or delete it) "
                   "to start from scratch") if tc.init_from == "scratch" else \
                f"pass another --out_dir to fine-tune from {tc.init_from}"
            raise CheckpointError(f"{self.out_dir} already holds checkpoints (latest step "
                                  f"{existing}): {how}")
        if tc.init_from == "scratch":
            cfg = tc.model_config()
            self.shardings = state_shardings(cfg, self.tx, self.mesh, scan_layers=scan)
            return cfg, new_state(cfg, self.tx, self.mesh, seed=tc.seed, scan_layers=scan), None
        params, found = self._load_weights(tc.init_from)
        cfg = self._adopt_architecture(found, tc.init_from)
        self.log(f"architecture from {tc.init_from}: {arch_summary(self.tc)}")
        self.shardings = state_shardings(cfg, self.tx, self.mesh, scan_layers=scan)
        return cfg, new_state(cfg, self.tx, self.mesh, seed=tc.seed, params=params,
                              scan_layers=scan), None

    def _resume(self, tc: TrainConfig):
        scan, hint = tc.scan_layers, "continue from one with --resume_step N"
        step, found, meta = ckpt.read_header(self.out_dir, None if tc.resume_step < 0 else
                                             tc.resume_step, step_hint=hint)
        window = (meta.get("train_config") or {}).get("block_size")
        cfg = self._adopt_architecture(found, f"{ckpt.checkpoint_dir(self.out_dir)} "
                                              f"(step {step})",
                                       window=window if isinstance(window, int) else None)
        self._check_steps_left(step, f"the checkpoint in {self.out_dir}")
        # Restore targets: the GPT-2 layout, sharded by the same rule as the run.
        saved = abstract_state(cfg, self.tx)
        targets = sh.tree_shardings(saved, self.mesh)
        with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
        saved = jax.tree_util.tree_map(with_sharding, saved, targets)
        self.shardings = state_shardings(cfg, self.tx, self.mesh, scan_layers=scan)
        if self.tc.eval_only:
            r = ckpt.restore(self.out_dir, step, params_target=saved.params, step_hint=hint)
            params = place_params(r["params"], self.shardings.params, cfg=cfg, scan_layers=scan)
            return cfg, TrainState(step=None, params=params, opt_state=None, rng=None), None
        r = ckpt.restore(self.out_dir, step, params_target=saved.params,
                         opt_state_target=saved.opt_state, step_hint=hint)
        self.log(f"resuming from {ckpt.checkpoint_dir(self.out_dir)} at step {r['step']} "
                 f"({arch_summary(self.tc)})")
        self.resumed_step = r["step"]
        state = place_state(r["params"], r["opt_state"], r["step"], r["meta"]["rng"],
                            self.shardings, cfg=cfg, scan_layers=scan)
        return cfg, state, r["meta"]

    # -- evaluation --------------------------------------------------------------------------
    def estimate_loss(self, params, step: int) -> dict[str, float]:
        out = {}
        for split in data_lib.SPLITS:
            batches = self.sampler.eval_batches(split, step, self.tc.eval_iters)
            losses = [self.eval_step(params, self._global_batch(b, 0)) for b in batches]
            out[split] = float(np.mean(jax.device_get(losses)))
        return out

    def evaluate_only(self) -> dict[str, float]:
        losses = self.estimate_loss(self.state.params, 0)
        self.log(f"eval: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
                 f"({self.tc.eval_iters} batches of {self.tc.batch_size} x "
                 f"{self.tc.block_size} tokens each)")
        return losses

    # -- checkpoints and metrics -------------------------------------------------------------
    def _append(self, row: dict) -> None:
        if self.main:
            with open(os.path.join(self.out_dir, METRICS), "a") as f:
                f.write(json.dumps(row) + "\n")

    def _diverged(self, what: str, step: int) -> TrainingDiverged:
        """The error for a NaN/inf at `step`, saying what the disk holds now."""
        steps = ckpt.all_steps(self.out_dir)
        lower = "Lower --learning_rate" + (" (or use --dtype float32)"
                                           if self.tc.dtype != "float32" else "")
        if step == 0:
            advice = ("The initial weights already give it, so the learning rate is not the "
                      "cause: check the data (token ids within the vocabulary) and the weights")
        elif steps:
            advice = f"{lower}, then continue with --init_from resume"
        else:
            advice = f"{lower} and start again"
        return TrainingDiverged(f"{what} at step {step}: training stopped and step {step} was "
                                f"not saved; {ckpt.describe_steps(steps)} in "
                                f"{ckpt.checkpoint_dir(self.out_dir)}. {advice}")

    def save(self, mngr, step: int) -> None:
        """Every process calls this: orbax writes each process's shards and process 0 the
        JSON items. Saved in the GPT-2 layout (unstacked params and Adam moments), only if
        every value is finite; TrainingDiverged otherwise, a one-line CheckpointError when the
        write fails (older steps kept)."""
        params, opt_state = self.state.params, self.state.opt_state
        if self.tc.scan_layers:
            params, opt_state = jax.jit(checkpoint_layout)((params, opt_state))
        try:
            ckpt.check_savable(step, params, self.cfg, opt_state)
        except ckpt.NonFiniteError as e:
            raise self._diverged(f"non-finite values after the update ({e})", step) from None
        if self._stale:   # resumed from an earlier step (--resume_step): rewritten now
            ckpt.delete_steps_after(mngr, self.resumed_step)
            self.log(f"removed checkpoint step(s) {', '.join(map(str, self._stale))}, after "
                     f"step {self.resumed_step} where this run resumed")
            self._stale = []
        meta = {"rng": np.asarray(jax.random.key_data(self.state.rng)).tolist(),
                "sampler": self.sampler.state(step), "elapsed": self.elapsed,
                "tokens": step * self.tc.tokens_per_step, "train_config": self.tc.to_dict(),
                "data": self.data.dir}
        try:
            ckpt.save(mngr, step, params, self.cfg, opt_state=opt_state, meta=meta,
                      checked=True)
        except CheckpointError as e:
            raise CheckpointError(f"{e}. Free some space (or fix {self.out_dir}), then "
                                  f"continue with --init_from resume") from None
        self.saved_step = step

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
    def fit(self) -> dict:
        """Train from the state's step to max_iters, evaluating and saving every
        eval_interval steps and at the end. A SIGINT/SIGTERM stops at the next step boundary
        and saves that step (when it trained one). Returns the final step, elapsed time,
        the signal (if any), saved_step (the latest step on disk from this run or the one it
        resumed; None: nothing on disk) and the last eval losses."""
        tc, state = self.tc, self.state
        start = int(state.step)
        self._check_steps_left(start, f"the checkpoint in {self.out_dir}")
        os.makedirs(self.out_dir, exist_ok=True)
        if not self.main:
            pass
        elif start > 0:
            truncate_metrics(self.out_dir, start)
        elif os.path.exists(os.path.join(self.out_dir, METRICS)):
            os.remove(os.path.join(self.out_dir, METRICS))
        n_params = count_params(self.cfg)
        fpt = flops_per_token(self.cfg, tc.block_size, count_params(self.cfg, non_embedding=True))
        peak, peak_src = peak_flops()
        self.log(f"model: {n_params / 1e6:.2f}M parameters; {tc.tokens_per_step:,} tokens/step; "
                 f"{fpt / 1e6:.1f} MFLOP/token; peak {peak / 1e12:.3g} TFLOP/s ({peak_src})")
        self.log(f"mesh: {dict(self.mesh.shape)} over {jax.device_count()} device(s) in "
                 f"{jax.process_count()} process(es); remat={tc.remat} "
                 f"scan_layers={tc.scan_layers}")

        batch = self._global_batch(self.sampler.train_batch(start))
        t0 = time.perf_counter()
        step_fn = make_train_step(self.cfg, self.tx, self.schedule, mesh=self.mesh,
                                  shardings=self.shardings, **self.run)
        step_fn = step_fn.lower(state, batch).compile()
        self.log(f"compiled the train step in {time.perf_counter() - t0:.1f}s")

        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        from tqdm import tqdm
        bar = tqdm(total=tc.max_iters, initial=start, unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        last = {}
        self.saved_step = self.resumed_step   # what the disk holds of this run
        mngr = ckpt.manager(self.out_dir, max_to_keep=MAX_TO_KEEP)
        # steps after the resumed one (--resume_step): kept until this run saves its first
        self._stale = [s for s in mngr.all_steps() if s > start]
        try:
            step = start
            if start == 0:
                last.update(self._eval_row(0))
            t_mark, step_mark, run_t0 = time.perf_counter(), start, time.perf_counter()
            elapsed0 = self.elapsed
            while step < tc.max_iters and not self._stop_requested():
                state, metrics = step_fn(state, batch)
                self.state = state
                if step + 1 < tc.max_iters:   # sample the next batch while the device works
                    batch = self._global_batch(self.sampler.train_batch(step + 1))
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
                    raise self._diverged(f"non-finite loss ({m['loss']}) or gradient norm "
                                         f"({m['grad_norm']})", step + 1)
                step += 1
                self.elapsed = elapsed0 + time.perf_counter() - run_t0
                bar.update(1)
                if step % tc.log_interval == 0 or step == tc.max_iters:
                    now = time.perf_counter()
                    tps = (step - step_mark) * tc.tokens_per_step / max(now - t_mark, 1e-9)
                    row = {"kind": "train", "step": step, "loss": m["loss"], "lr": m["lr"],
                           "grad_norm": m["grad_norm"], "tokens": step * tc.tokens_per_step,
                           "tokens_per_s": tps, "mfu": tps * fpt / peak,
                           "time": round(self.elapsed, 3)}
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
            self._shut(bar, mngr, handlers, quiet=True)   # the first error is the one to see
            raise
        self._shut(bar, mngr, handlers, quiet=False)
        return {"step": step, "elapsed": self.elapsed, "stopped_by_signal": self.stop_signal,
                "saved_step": self.saved_step, **last}

    def _stop_message(self, mngr, step: int, start: int, bar) -> None:
        """After a signal: save the current step when it trained one, and say what is on
        disk, exactly."""
        name = signal.Signals(self.stop_signal).name
        where = ckpt.checkpoint_dir(self.out_dir)
        if self.saved_step != step and step > start:
            self.save(mngr, step)
            msg = f"{name}: saved step {step} in {where}; continue with --init_from resume"
        elif self.saved_step == step:
            msg = (f"{name}: stopped at step {step}, which is saved in {where}; continue with "
                   f"--init_from resume")
        else:
            msg = f"{name}: stopped at step {step}, before the first update: nothing was saved"
        if self.main:
            bar.write(msg, file=sys.stderr)

    @staticmethod
    def _shut(bar, mngr, handlers, *, quiet: bool) -> None:
        bar.close()
        try:
            mngr.wait_until_finished()
            mngr.close()
        except Exception:  # noqa: BLE001 - after a failed save orbax may fail again here
            if not quiet:
                raise
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def _eval_row(self, step: int) -> dict:
        losses = self.estimate_loss(self.state.params, step)
        if not all(math.isfinite(v) for v in losses.values()):
            # not written to metrics.jsonl or plotted, and never saved
            raise self._diverged(f"non-finite eval loss (train {losses['train']}, val "
                                 f"{losses['val']})", step)
        self._append({"kind": "eval", "step": step, "train_loss": losses["train"],
                      "val_loss": losses["val"], "time": round(self.elapsed, 3)})
        if self.main:
            plot_loss(self.out_dir)
        msg = f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
        from tqdm import tqdm
        tqdm.write(msg) if self.progress else self.log(msg)
        return {"train_loss": losses["train"], "val_loss": losses["val"]}
