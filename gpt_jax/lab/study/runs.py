"""Short training runs for the study, through the library's own pieces: TrainConfig ->
make_optimizer, new_state, make_train_step / make_eval_step, the BatchSampler of a prepared
token directory. No checkpoints, no metrics file: a run is a list of losses and its params."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import jax
import numpy as np

import gpt_jax.data as data_lib
from gpt_jax.model.config import GPTConfig
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.model.sharding import make_mesh
from gpt_jax.model.stacking import unstack_layers
from gpt_jax.train.state import new_state, state_shardings
from gpt_jax.train.steps import make_eval_step, make_train_step
from gpt_jax.train.config import TrainConfig


@dataclass
class Run:
    """One short run: per-step train losses (nan after a divergence), val loss at the end."""
    label: str
    cfg: GPTConfig
    lr: float
    warmup: int
    losses: list = field(default_factory=list)
    lrs: list = field(default_factory=list)
    val_loss: float = math.nan
    diverged: bool = False
    seconds: float = 0.0
    params: Optional[dict] = None   # GPT-2 layout; kept only when asked for

    def final(self, last: int = 10) -> float:
        """Mean train loss of the last `last` steps (nan if the run blew up)."""
        tail = self.losses[-last:]
        return float(np.mean(tail)) if tail and not self.diverged else math.nan


def load_data(block_size: int, vocab_size: int, progress: bool = False):
    """The built-in corpus (prepared on first use), as TokenData."""
    d = data_lib.resolve("builtin", progress=progress)
    return data_lib.TokenData(d, block_size=block_size, vocab_size=vocab_size)


def train(cfg: GPTConfig, data, *, steps: int, lr: float, warmup: int, batch_size: int,
          seed: int = 0, eval_iters: int = 4, label: str = "", keep_params: bool = False,
          blowup: float = 3.0, bar=None) -> Run:
    """Train cfg from scratch for `steps` steps at peak lr (linear warm-up over `warmup` steps,
    cosine to lr/10 at the end), AdamW with GPT-2's clipping and weight decay (the train.py
    defaults). A loss that turns non-finite, or climbs `blowup` nats above the initial loss,
    ends the run as diverged. eval_iters 0: no val loss (nor its compile). Layers are scanned (one compiled block) so depth costs no
    compile time."""
    tc = TrainConfig(model=cfg, max_iters=steps, learning_rate=lr, min_lr=lr / 10,
                     warmup_iters=warmup, lr_decay_iters=max(steps, warmup + 1),
                     batch_size=batch_size, seed=seed, scan_layers=True)
    tx, schedule = make_optimizer(tc)
    mesh = make_mesh("")
    state = new_state(cfg, tx, mesh, seed=seed, scan_layers=True)
    step_fn = make_train_step(cfg, tx, schedule, mesh=mesh, scan_layers=True)
    sampler = data_lib.BatchSampler(data, block_size=cfg.block_size, batch_size=batch_size,
                                    seed=seed)
    run = Run(label, cfg, lr, warmup)
    t0 = time.perf_counter()
    for step in range(steps):
        state, m = step_fn(state, sampler.train_batch(step))
        loss = float(m["loss"])
        run.lrs.append(float(m["lr"]))
        if not math.isfinite(loss) or (run.losses and loss > run.losses[0] + blowup):
            run.diverged = True
            run.losses += [loss if math.isfinite(loss) else math.nan] + \
                [math.nan] * (steps - step - 1)
            break
        run.losses.append(loss)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{label} loss {loss:.2f}")
    else:
        if keep_params:
            run.params = jax.device_get(unstack_layers(state.params))
        if not eval_iters:
            return _done(run, t0, bar, steps)
        shard = state_shardings(cfg, tx, mesh, scan_layers=True).params
        evaluate = make_eval_step(cfg, mesh=mesh, param_shardings=shard, scan_layers=True)
        val = sampler.eval_batches("val", 0, eval_iters)
        run.val_loss = float(np.mean([float(evaluate(state.params, b)) for b in val]))
    return _done(run, t0, bar, steps)


def _done(run: Run, t0: float, bar, steps: int) -> Run:
    if bar is not None and run.diverged:
        bar.update(steps - len([x for x in run.losses if math.isfinite(x)]))
    run.seconds = time.perf_counter() - t0
    return run
