"""Training as pure functions: run config, loss, optimizer, TrainState, train_step, eval_step.

No I/O here (gpt_jax/trainer.py holds the loop with files, signals and progress bars).

    tx, schedule = make_optimizer(tc)
    state = init_state(params, tx, jax.random.key(seed))
    train_step = make_train_step(cfg, tx, schedule)    # jitted, state donated
    state, metrics = train_step(state, batch)          # batch int32 (accum, B, T + 1)

On a mesh (any number of devices or hosts) the same functions run with explicit shardings:

    mesh = make_mesh("data=2,fsdp=4")                  # gpt_jax/sharding.py
    state = new_state(cfg, tx, mesh, seed=seed)        # built directly in its shards
    train_step = make_train_step(cfg, tx, schedule, mesh=mesh)
    state, metrics = train_step(state, make_global_batch(rows, mesh, (accum, B, T + 1)))

`remat` and `scan_layers` (run settings of the GPT module) change memory and compile time,
not the losses. With scan_layers the state holds the layers stacked under "h"; checkpoints
always hold the GPT-2 layout (see checkpoint_layout / place_state).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpt_jax.config import DTYPES, GPTConfig
from gpt_jax.errors import ConfigError
from gpt_jax.model import GPT, init_params, map_param_trees, stack_layers, unstack_layers
from gpt_jax.sharding import (activation_sharding, batch_sharding, parse_mesh, replicated,
                              tree_shardings)


# -- run configuration -----------------------------------------------------------------------

MAX_SEED = 2**31 - 1   # the dropout key is key(seed + 1); keys keep the low 32 bits of a seed

@dataclass(frozen=True)
class TrainConfig:
    """Every train.py flag. The defaults are the `cpu-small` config: a 4-layer, 256-wide GPT
    that learns the built-in corpus (Python's stdlib) on a 2-core laptop CPU in ~7 minutes
    (val loss 10.4 -> 3.8 in 200 steps at lr 1e-3; 2e-3 stalled near 4.1)."""
    # I/O
    out_dir: str = "out"
    data: str = "builtin"         # builtin | prepared dir | text files/dirs (comma-separated)
    init_from: str = "scratch"    # scratch | resume | gpt2* | HF dir | another run's out_dir
    resume_step: int = -1         # with init_from=resume: the step to continue from; -1: latest
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256
    vocab_size: int = 50257
    dropout: float = 0.0
    bias: bool = True
    dtype: str = "float32"        # compute dtype; parameters and optimizer state stay float32
    # batch: a step sees batch_size * gradient_accumulation_steps * block_size tokens
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_iters: int = 200
    # AdamW + warmup-cosine schedule + global-norm clipping
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 20
    lr_decay_iters: int = 200
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0        # 0 disables clipping
    # evaluation, logging
    eval_interval: int = 50
    eval_iters: int = 8
    eval_only: bool = False
    log_interval: int = 5
    seed: int = 1337
    # parallelism and memory: none of them changes the losses (up to rounding)
    mesh: str = ""                # axis=int[,axis=int] over data and fsdp; "" = all on data
    remat: bool = False
    scan_layers: bool = False

    def __post_init__(self):
        for name in ("out_dir", "data", "init_from"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(f"{name} must be a non-empty string (a path or a name), "
                                  f"got {v!r}")
        pos = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "batch_size",
               "gradient_accumulation_steps", "lr_decay_iters", "eval_interval", "eval_iters",
               "log_interval")
        for name in pos:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("max_iters", "warmup_iters", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if self.seed > MAX_SEED:   # JAX keys keep 32 bits: larger seeds would alias smaller ones
            raise ConfigError(f"seed must be at most {MAX_SEED}, got {self.seed}")
        if isinstance(self.resume_step, bool) or not isinstance(self.resume_step, int) or \
                self.resume_step < -1:
            raise ConfigError(f"resume_step must be a checkpoint step (or -1 for the latest), "
                              f"got {self.resume_step!r}")
        if self.resume_step != -1 and self.init_from != "resume":
            raise ConfigError(f"resume_step {self.resume_step} needs init_from resume (it picks "
                              f"the checkpoint in out_dir to continue from)")
        for name in ("learning_rate", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip",
                     "dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ConfigError(f"{name} must be a finite non-negative number, got {v!r}")
        if self.learning_rate <= 0 or self.min_lr > self.learning_rate:
            raise ConfigError(f"need 0 < min_lr <= learning_rate, got learning_rate="
                              f"{self.learning_rate}, min_lr={self.min_lr}")
        if not (self.beta1 < 1 and self.beta2 < 1):
            raise ConfigError("beta1 and beta2 must be below 1")
        if self.lr_decay_iters <= self.warmup_iters:
            raise ConfigError(f"lr_decay_iters ({self.lr_decay_iters}) must exceed "
                              f"warmup_iters ({self.warmup_iters})")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        for name in ("bias", "eval_only", "remat", "scan_layers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.mesh, str):
            raise ConfigError(f"mesh must be a string such as data=-1 or data=2,fsdp=4, "
                              f"got {self.mesh!r}")
        parse_mesh(self.mesh, None)  # the grammar now; the device count when the mesh is built
        self.model_config()  # validates n_embd % n_head etc.

    def model_config(self) -> GPTConfig:
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.block_size,
                         n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                         dropout=self.dropout, bias=self.bias, dtype=self.dtype)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps * self.block_size

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# One line per flag, for train.py --help (and the README's table).
HELP = {
    "out_dir": "checkpoints/, metrics.jsonl and loss.png go here",
    "data": "builtin (Python stdlib, prepared on first use) | a prepare.py dir | text files/dirs, "
            "comma-separated (tokenised into OUT_DIR/data)",
    "init_from": "scratch | resume (a checkpoint in out_dir) | gpt2, gpt2-medium, ... | "
                 "a Hugging Face GPT-2 dir | another train.py out_dir (its latest weights)",
    "resume_step": "with --init_from resume: the step to continue from (-1: the latest); "
                   "later steps are removed when the run saves",
    "n_layer": "transformer blocks", "n_head": "attention heads", "n_embd": "model width",
    "block_size": "context length in tokens (each sample is block_size + 1 tokens)",
    "vocab_size": "50257 (GPT-2), or padded up (e.g. 50304) for faster matmuls",
    "dropout": "dropout rate, training only", "bias": "biases in Dense layers and LayerNorms",
    "dtype": "compute dtype: float32 | bfloat16 (parameters and Adam state stay float32)",
    "batch_size": "sequences per micro-batch",
    "gradient_accumulation_steps": "micro-batches per optimizer step (lax.scan, one jit)",
    "max_iters": "optimizer steps to train to", "learning_rate": "peak learning rate",
    "min_lr": "learning rate at and after lr_decay_iters",
    "warmup_iters": "linear warm-up steps", "lr_decay_iters": "end of the cosine decay (step)",
    "weight_decay": "AdamW decay of Dense kernels and embeddings",
    "beta1": "AdamW beta1", "beta2": "AdamW beta2",
    "grad_clip": "clip the global gradient norm to this (0: off)",
    "eval_interval": "evaluate, checkpoint and redraw loss.png every this many steps",
    "eval_iters": "batches per split in each evaluation",
    "eval_only": "evaluate the --init_from weights and exit",
    "log_interval": "steps between metrics.jsonl train rows",
    "seed": "parameter init, dropout and batch sampling",
    "mesh": "device mesh over data and fsdp, e.g. data=2,fsdp=4 or fsdp=-1 (one size may be "
            "-1; default: all devices on data); fsdp shards parameters and Adam state",
    "remat": "recompute each block's activations in the backward pass (less memory)",
    "scan_layers": "one compiled block scanned over stacked layers (faster compiles)",
}

# Built-in --config values: overrides on top of the defaults (= cpu-small).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": {},
    # GPT-2 small's recipe (as in nanoGPT's train_gpt2.py): ~0.5M tokens per step
    # (16 x 1024 x 32 = 524,288), AdamW 6e-4 -> 6e-5 over 600k steps after 2000 warm-up steps,
    # bfloat16 compute. The vocabulary is padded to 50304 (= 64 * 786) for faster matmuls; the
    # 47 extra ids get -1e9 logits. Meant for a GPU and OpenWebText/FineWeb prepared with
    # prepare.py --hf_dataset; --max_iters trades quality for time.
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304,
                      batch_size=16, gradient_accumulation_steps=32, max_iters=600_000,
                      learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000,
                      lr_decay_iters=600_000, eval_interval=1000, eval_iters=100,
                      log_interval=10, dtype="bfloat16", out_dir="out-gpt2-124m"),
}


# -- loss ------------------------------------------------------------------------------------

def cross_entropy(logits, targets):
    """Mean next-token cross-entropy in float32. logits (..., V), targets int (...).

    Padded vocab ids (>= n_real_vocab) already carry -1e9 logits from the model: exp() of them
    is exactly 0 in float32, so they add nothing to the normaliser and are never targets.
    """
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), targets).mean()


def make_model(cfg: GPTConfig, *, remat: bool = False, scan_layers: bool = False,
               mesh=None) -> GPT:
    """The GPT module with the run's settings (none of which changes the function): remat,
    scan_layers (params stacked under "h"), and on a mesh activations kept split by rows."""
    sharding = None
    if mesh is not None:
        sharding = activation_sharding(mesh)
    return GPT(cfg, remat=remat, scan_layers=scan_layers, activation_sharding=sharding)


def loss_fn(params, cfg: GPTConfig, tokens, dropout_key=None, *, model: Optional[GPT] = None):
    """tokens int32 (B, T + 1): predict tokens[:, 1:] from tokens[:, :-1]. model: the GPT
    module to apply (make_model; default GPT(cfg))."""
    model = GPT(cfg) if model is None else model
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    logits = model.apply({"params": params}, tokens[:, :-1], deterministic=dropout_key is None,
                         rngs=rngs)
    return cross_entropy(logits, tokens[:, 1:])


# -- optimizer -------------------------------------------------------------------------------

def decay_mask(params):
    """True for the leaves that get weight decay: Dense kernels and embeddings, chosen by the
    leaf's name so that stacked (scanned) layers keep the rule; biases and LayerNorm scales
    and offsets are left alone."""
    def decays(path, _):
        return getattr(path[-1], "key", None) in ("kernel", "embedding")
    return jax.tree_util.tree_map_with_path(decays, params)


def lr_schedule(tc: TrainConfig) -> optax.Schedule:
    """lr(s) for the update at step s (s = 0 is the first update); with W = warmup_iters,
    D = lr_decay_iters, u = s + 1:
        u <= W:      learning_rate * u / W                              (s = 0 gets lr / W)
        W < u <= D:  min_lr + (learning_rate - min_lr) * (1 + cos(pi * (u - W) / (D - W))) / 2
        u > D:       min_lr
    i.e. optax.warmup_cosine_decay_schedule(0, lr, W, D, min_lr) evaluated at s + 1: the first
    update is not wasted on lr = 0 (as in nanoGPT's (it + 1) / (warmup + 1) warm-up)."""
    sched = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=tc.learning_rate, warmup_steps=tc.warmup_iters,
        decay_steps=tc.lr_decay_iters, end_value=tc.min_lr)
    return lambda step: sched(step + 1)


def make_optimizer(tc: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = lr_schedule(tc)
    parts = [optax.clip_by_global_norm(tc.grad_clip)] if tc.grad_clip > 0 else []
    parts.append(optax.adamw(schedule, b1=tc.beta1, b2=tc.beta2, eps=1e-8,
                             weight_decay=tc.weight_decay, mask=decay_mask))
    return optax.chain(*parts), schedule


# -- state and steps -------------------------------------------------------------------------

@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 (): updates done so far
    params: Any
    opt_state: Any
    rng: jax.Array         # typed key; the dropout key of step s is fold_in(rng, s)


def init_state(params, tx: optax.GradientTransformation, rng) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=rng)


def grads_and_loss(params, cfg: GPTConfig, batch, dropout_key, *,
                   model: Optional[GPT] = None):
    """Mean loss and gradient over the micro-batches of batch (accum, B, T + 1).

    The micro-batches run one after another in a lax.scan (memory of one micro-batch), their
    gradients summed and divided by accum: equal (up to rounding) to one batch of accum * B.
    """
    use_dropout = cfg.dropout > 0
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, model=model))

    def micro(i, tokens):
        key = jax.random.fold_in(dropout_key, i) if use_dropout else None
        return grad_fn(params, cfg, tokens, key)

    accum = batch.shape[0]
    if accum == 1:   # no loop: lets XLA fuse the update into the backward pass
        return micro(0, batch[0])

    def body(carry, xs):
        loss, grads = micro(*xs)
        return jax.tree_util.tree_map(jnp.add, carry, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), batch))
    return loss / accum, jax.tree_util.tree_map(lambda g: g / accum, grads)


def train_step(state: TrainState, batch, *, cfg: GPTConfig, tx: optax.GradientTransformation,
               schedule: optax.Schedule, model: Optional[GPT] = None
               ) -> tuple[TrainState, dict]:
    """One optimizer update from batch int32 (accum, B, T + 1). Metrics: loss (mean over the
    step's tokens, before the update), grad_norm (global, before clipping), lr (of this update)."""
    dropout_key = jax.random.fold_in(state.rng, state.step)
    loss, grads = grads_and_loss(state.params, cfg, batch, dropout_key, model=model)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": jnp.asarray(schedule(state.step), jnp.float32)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


# -- layouts and shardings -------------------------------------------------------------------
# Checkpoints, HF files and sample.py see the GPT-2 layout (h_0, h_1, ...); a scan_layers run
# keeps its parameters and Adam moments stacked under "h". These convert at the boundary.

def run_layout(tree, cfg: GPTConfig, scan_layers: bool):
    """Params, or anything holding params-shaped dicts (an optax state), in the layout the run
    computes with."""
    if not scan_layers:
        return tree
    return map_param_trees(lambda p: p if "h" in p else stack_layers(p, cfg.n_layer), tree)


def checkpoint_layout(tree):
    """The inverse of run_layout: the GPT-2 layout that checkpoints hold."""
    return map_param_trees(unstack_layers, tree)


def abstract_state(cfg: GPTConfig, tx: optax.GradientTransformation, *,
                   scan_layers: bool = False) -> TrainState:
    """The TrainState as ShapeDtypeStructs (run layout), without allocating anything."""
    return jax.eval_shape(lambda: init_state(
        run_layout(init_params(cfg, jax.random.key(0)), cfg, scan_layers), tx,
        jax.random.key(0)))


def state_shardings(cfg: GPTConfig, tx: optax.GradientTransformation, mesh, *,
                    scan_layers: bool = False) -> TrainState:
    """Where every leaf of the TrainState lives on `mesh`: parameters and their Adam moments
    along their largest fsdp-divisible dimension, scalars and the RNG key replicated."""
    return tree_shardings(abstract_state(cfg, tx, scan_layers=scan_layers), mesh)


def new_state(cfg: GPTConfig, tx: optax.GradientTransformation, mesh, *, seed: int,
              params=None, scan_layers: bool = False) -> TrainState:
    """A fresh TrainState placed on `mesh`: GPT-2 init from key(seed) (or the given params, in
    the GPT-2 layout), dropout key key(seed + 1). Initialised inside jit with out_shardings,
    so each device only ever materialises its own shards (the big-model path), and the values
    do not depend on the mesh (JAX's partitionable threefry)."""
    shardings = state_shardings(cfg, tx, mesh, scan_layers=scan_layers)
    make = lambda p: init_state(run_layout(p, cfg, scan_layers), tx, jax.random.key(seed + 1))
    if params is None:
        return jax.jit(lambda: make(init_params(cfg, jax.random.key(seed))),
                       out_shardings=shardings)()
    # Host copies: every process holds the same values, which jit places as a global array.
    return jax.jit(make, out_shardings=shardings)(jax.device_get(params))


def place_state(params, opt_state, step: int, rng_key_data, shardings: TrainState, *,
                cfg: GPTConfig, scan_layers: bool = False) -> TrainState:
    """A TrainState from restored parts (GPT-2 layout, any sharding) on `shardings`, in the run
    layout; params and opt_state are donated (no second copy of a big model)."""
    def make(p, o, s, k):
        return TrainState(step=s, params=run_layout(p, cfg, scan_layers),
                          opt_state=run_layout(o, cfg, scan_layers),
                          rng=jax.random.wrap_key_data(k))
    return jax.jit(make, out_shardings=shardings, donate_argnums=(0, 1))(
        params, opt_state, np.asarray(step, np.int32), np.asarray(rng_key_data, np.uint32))


def place_params(params, param_shardings, *, cfg: GPTConfig, scan_layers: bool = False):
    """Parameters (GPT-2 layout, any sharding or host arrays) on param_shardings, run layout."""
    return jax.jit(lambda p: run_layout(p, cfg, scan_layers),
                   out_shardings=param_shardings)(params)


def make_train_step(cfg: GPTConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, mesh=None, shardings: Optional[TrainState] = None,
                    remat: bool = False, scan_layers: bool = False,
                    donate: bool = True) -> Callable:
    """The jitted train step: (state, batch) -> (state, metrics), the state's buffers donated.
    The one place where the step is jitted.

    With a mesh the step takes explicit shardings: the state on `shardings` (default
    state_shardings(...)), the batch's rows over (data, fsdp), metrics replicated. XLA then
    inserts the collectives: gradients all-reduced over data, fsdp weights all-gathered where
    a layer uses them and their gradients reduce-scattered. Nothing else changes with the mesh.
    """
    model = make_model(cfg, remat=remat, scan_layers=scan_layers, mesh=mesh)
    fn = functools.partial(train_step, cfg=cfg, tx=tx, schedule=schedule, model=model)
    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(fn, donate_argnums=donate_argnums)
    if shardings is None:
        shardings = state_shardings(cfg, tx, mesh, scan_layers=scan_layers)
    return jax.jit(fn, in_shardings=(shardings, batch_sharding(mesh)),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=donate_argnums)


def make_eval_step(cfg: GPTConfig, *, mesh=None, param_shardings=None, remat: bool = False,
                   scan_layers: bool = False) -> Callable:
    """Jitted (params, tokens (B, T + 1)) -> mean loss, dropout off; on a mesh the params stay
    where the train state keeps them and the rows split over (data, fsdp)."""
    model = make_model(cfg, remat=remat, scan_layers=scan_layers, mesh=mesh)
    fn = lambda params, tokens: loss_fn(params, cfg, tokens, model=model)
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, in_shardings=(param_shardings, batch_sharding(mesh, 2, 0)),
                   out_shardings=replicated(mesh))


def flops_per_token(cfg: GPTConfig, seq_len: int, n_params_no_wpe: int) -> float:
    """Training FLOPs per token (DESIGN.md): 6N + 12 * L * n_embd * T (N excludes wpe)."""
    return 6 * n_params_no_wpe + 12 * cfg.n_layer * cfg.n_embd * seq_len


def all_finite(*xs) -> bool:
    return all(math.isfinite(float(x)) for x in xs)
