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
from gpt_jax.hf import from_hf
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
        raise ConfigError(f"config file {path} does not exist; pass a built-in config "
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


def resolve_config(config: str = "cpu-small", overrides: Optional[dict] = None) -> TrainConfig:
    """defaults < --config (a built-in name or a .json/.toml file) < flags (overrides)."""
    base = dict(TRAIN_PRESETS[config]) if config in TRAIN_PRESETS else load_config_file(config)
    fields = TrainConfig.fields()
    unknown = sorted(set(base) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config {config}; allowed: "
                          f"{', '.join(fields)}")
    merged = {**base, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    for k, v in merged.items():  # TOML/JSON give ints for floats like 1: accept them
        if fields[k].type == "float" and isinstance(v, int) and not isinstance(v, bool):
            merged[k] = float(v)
    try:
        return TrainConfig(**merged)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def format_config(tc: TrainConfig) -> str:
    return "\n".join(f"  {k:<28} {v!r}" for k, v in tc.to_dict().items())


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
    from gpt_jax.bench import Context, measure_matmul_flops
    timing, work = measure_matmul_flops(Context(repeats=3, warmup=1), 2048)
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

class Trainer:
    """Builds the model state (scratch, resume or HF weights), the data and the steps."""

    def __init__(self, tc: TrainConfig, *, progress: bool = True, log=print):
        self.main = sh.is_main_process()
        # Only process 0 talks; the others compute (and save their checkpoint shards).
        self.tc, self.progress = tc, progress and self.main
        self.log = log if self.main else (lambda *a, **k: None)
        self.out_dir = tc.out_dir
        self.mesh = sh.make_mesh(tc.mesh)
        sh.check_batch_divides(tc.batch_size, self.mesh)
        sh.local_rows(tc.batch_size)  # each process feeds an equal share of the rows
        self.tx, self.schedule = make_optimizer(tc)
        self.run = dict(remat=tc.remat, scan_layers=tc.scan_layers)  # memory/compile only
        self.cfg, self.state, meta = self._model(tc)
        if tc.block_size > self.cfg.block_size:
            raise ConfigError(f"block_size {tc.block_size} exceeds the model's "
                              f"{self.cfg.block_size}")
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

    def _model(self, tc: TrainConfig):
        """(model cfg, TrainState on the mesh, restored checkpoint meta or None). Also sets
        self.shardings. Checkpoints hold the GPT-2 layout on whatever mesh saved them: they are
        restored straight into this mesh's shards (GPT-2 layout), then put in the run layout."""
        cfg, scan = tc.model_config(), tc.scan_layers
        # A new run never writes over an out_dir's checkpoints (checked before any HF download).
        existing = None if tc.eval_only or tc.init_from == "resume" else \
            ckpt.latest_step(self.out_dir)
        if tc.init_from == "scratch":
            if existing is not None:
                raise CheckpointError(
                    f"{self.out_dir} already holds checkpoints (latest step {existing}): "
                    f"continue with --init_from resume, or pass another --out_dir (or delete "
                    f"it) to start from scratch")
            self.shardings = state_shardings(cfg, self.tx, self.mesh, scan_layers=scan)
            return cfg, new_state(cfg, self.tx, self.mesh, seed=tc.seed, scan_layers=scan), None
        if tc.init_from == "resume":
            # Restore targets: the GPT-2 layout, sharded by the same rule as the run.
            saved = abstract_state(cfg, self.tx)
            targets = sh.tree_shardings(saved, self.mesh)
            with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
            saved = jax.tree_util.tree_map(with_sharding, saved, targets)
            if tc.eval_only:
                r = ckpt.restore(self.out_dir, params_target=saved.params, expected_config=cfg)
                cfg = r["config"].replace(dropout=tc.dropout, dtype=tc.dtype)
                self.shardings = state_shardings(cfg, self.tx, self.mesh, scan_layers=scan)
                params = place_params(r["params"], self.shardings.params, cfg=cfg,
                                      scan_layers=scan)
                return cfg, TrainState(step=None, params=params, opt_state=None, rng=None), None
            r = ckpt.restore(self.out_dir, params_target=saved.params,
                             opt_state_target=saved.opt_state, expected_config=cfg)
            self.log(f"resuming from {ckpt.checkpoint_dir(self.out_dir)} at step {r['step']}")
            self.shardings = state_shardings(cfg, self.tx, self.mesh, scan_layers=scan)
            state = place_state(r["params"], r["opt_state"], r["step"], r["meta"]["rng"],
                                self.shardings, cfg=cfg, scan_layers=scan)
            return cfg, state, r["meta"]
        if existing is not None:
            raise CheckpointError(f"{self.out_dir} already holds checkpoints: pass another "
                                  f"--out_dir to fine-tune from {tc.init_from}")
        params, hf_cfg = from_hf(tc.init_from)
        self.log(f"initialised from {tc.init_from}: n_layer={hf_cfg.n_layer} "
                 f"n_head={hf_cfg.n_head} n_embd={hf_cfg.n_embd} (architecture flags ignored)")
        cfg = hf_cfg.replace(dropout=tc.dropout, dtype=tc.dtype)
        self.shardings = state_shardings(cfg, self.tx, self.mesh, scan_layers=scan)
        return cfg, new_state(cfg, self.tx, self.mesh, seed=tc.seed, params=params,
                              scan_layers=scan), None

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

    def save(self, mngr, step: int) -> None:
        """Every process calls this: orbax writes each process's shards and process 0 the
        JSON items. Saved in the GPT-2 layout (unstacked params and Adam moments)."""
        meta = {"rng": np.asarray(jax.random.key_data(self.state.rng)).tolist(),
                "sampler": self.sampler.state(step), "elapsed": self.elapsed,
                "tokens": step * self.tc.tokens_per_step, "train_config": self.tc.to_dict(),
                "data": self.data.dir}
        params, opt_state = self.state.params, self.state.opt_state
        if self.tc.scan_layers:
            params, opt_state = jax.jit(checkpoint_layout)((params, opt_state))
        ckpt.save(mngr, step, params, self.cfg, opt_state=opt_state, meta=meta)
        mngr.wait_until_finished()

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
        tc, state = self.tc, self.state
        os.makedirs(self.out_dir, exist_ok=True)
        start = int(state.step)
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
        mngr = ckpt.manager(self.out_dir, max_to_keep=MAX_TO_KEEP)
        try:
            step, saved = start, start
            if start == 0 and tc.max_iters > 0:
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
                    raise TrainingDiverged(
                        f"non-finite loss ({m['loss']}) or gradient norm ({m['grad_norm']}) at "
                        f"step {step + 1}: training stopped without saving; the last good "
                        f"checkpoint (step {saved}) is intact. Lower --learning_rate or use "
                        f"float32, then --init_from resume")
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
                    saved = step
                    t_mark, step_mark = time.perf_counter(), step
            if self.stop_signal is not None:
                if saved != step:
                    self.save(mngr, step)
                name = signal.Signals(self.stop_signal).name
                if self.main:
                    bar.write(f"{name}: saved step {step} in "
                              f"{ckpt.checkpoint_dir(self.out_dir)}; continue with "
                              f"--init_from resume", file=sys.stderr)
        finally:
            bar.close()
            mngr.wait_until_finished()
            mngr.close()
            for s, h in handlers.items():
                signal.signal(s, h)
        return {"step": step, "elapsed": self.elapsed, "stopped_by_signal": self.stop_signal,
                **last}

    def _eval_row(self, step: int) -> dict:
        losses = self.estimate_loss(self.state.params, step)
        self._append({"kind": "eval", "step": step, "train_loss": losses["train"],
                      "val_loss": losses["val"], "time": round(self.elapsed, 3)})
        if self.main:
            plot_loss(self.out_dir)
        msg = f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
        from tqdm import tqdm
        tqdm.write(msg) if self.progress else self.log(msg)
        return {"train_loss": losses["train"], "val_loss": losses["val"]}
