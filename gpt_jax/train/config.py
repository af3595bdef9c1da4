"""The run configuration of train.py: TrainConfig, its presets, config files and precedence.

Flags, config files, checkpoints' meta["train_config"] and format_config all name ONE flat set
of keys (`--n_layer 4`, {"n_layer": 4}); inside, the model's keys form `tc.model`, a GPTConfig,
which checks them.

    tc = resolve_config("cpu-small", {"max_iters": 100})   # defaults < --config < flags
    tc.model                                                # GPTConfig(n_layer=4, ...)
    tc.to_dict()                                            # flat, as a checkpoint stores it
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from gpt_jax.errors import ConfigError
from gpt_jax.evaluation.task_evals import parse_spec
from gpt_jax.model.config import GPTConfig, help_field
from gpt_jax.model.sharding import parse_mesh
from gpt_jax.train.guard import WINDOW
from gpt_jax.train.profiling import parse_profile_steps
from gpt_jax.train.tracking import parse_log_to

# optimizer.lr_schedule builds each of these (llm.c's llmc/schedulers.h for the last three)
LR_SCHEDULES = ("cosine", "constant", "linear", "wsd")

# The GPTConfig fields a run sets: flags, config-file keys and meta["train_config"] keys.
MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias",
                "dtype", "norm", "tie_embeddings", "causal", "init", "final_ln")
TRAIN_DTYPES = ("float32", "bfloat16")   # float16 would need loss scaling, which we do not do
MAX_SEED = 2**31 - 1   # the dropout key is key(seed + 1); keys keep the low 32 bits of a seed


@dataclass(frozen=True)
class TrainConfig:
    """Every train.py flag: the model to build (a GPTConfig; its block_size is the training
    window) and how to train it. The defaults are the `cpu-small` config: a 4-layer, 128-wide
    GPT that learns the built-in corpus (the stdlib's docstrings and reference manual) well
    enough in about 7 minutes on 2 CPU cores to write recognisable sentences of it; narrow,
    because the 50257-wide tied head is most of the cost per token."""
    out_dir: str = help_field("out", "checkpoints/, metrics.jsonl and loss.png go here")
    data: str = help_field(
        "builtin", "builtin (Python stdlib docs, prepared on first use) | a prepare.py dir | text "
        "files/dirs, comma-separated (tokenised into OUT_DIR/data)")
    init_from: str = help_field(
        "scratch", "scratch | resume (a checkpoint in out_dir) | gpt2, gpt2-medium, ... | a "
        "Hugging Face GPT-2 dir | another train.py out_dir (its latest weights)")
    resume_step: int = help_field(
        -1, "with --init_from resume: the step to continue from (-1: the latest); later steps "
        "are removed when the run saves")
    # flat keys n_layer ... dtype; on resume and fine-tunes the architecture comes from the weights
    model: GPTConfig = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=256)
    # a step sees batch_size * gradient_accumulation_steps * block_size tokens
    batch_size: int = help_field(4, "sequences per micro-batch")
    gradient_accumulation_steps: int = help_field(
        1, "micro-batches per optimizer step (lax.scan, one jit)")
    max_iters: int = help_field(800, "optimizer steps to train to")
    # AdamW + learning-rate schedule + global-norm clipping (gpt_jax/train/optimizer.py)
    lr_schedule: str = help_field(
        "cosine", "cosine (warm-up, cosine decay to min_lr at lr_decay_iters) | constant (warm-up, "
        "then learning_rate) | linear (warm-up, linear decay) | wsd (warm-up, stable, then "
        "1 - sqrt decay over the last decay_frac of lr_decay_iters), as llm.c's schedulers")
    decay_frac: float = help_field(0.2, "wsd: the fraction of lr_decay_iters spent decaying")
    learning_rate: float = help_field(2e-3, "peak learning rate")
    min_lr: float = help_field(2e-4, "learning rate at and after lr_decay_iters")
    warmup_iters: int = help_field(40, "linear warm-up steps")
    lr_decay_iters: int = help_field(800, "end of the cosine decay (step)")
    weight_decay: float = help_field(0.1, "AdamW decay of Dense kernels and embeddings")
    beta1: float = help_field(0.9, "AdamW beta1")
    beta2: float = help_field(0.95, "AdamW beta2")
    grad_clip: float = help_field(1.0, "clip the global gradient norm to this (0: off)")
    # spike guard (gpt_jax/train/guard.py), as llm.c's -sl/-sg: a skipped update leaves the weights
    # and the optimizer state as they were
    skip_loss_z: float = help_field(
        0.0, "skip an update whose loss is more than this many standard deviations above its "
        "running mean (0: off)")
    skip_grad_z: float = help_field(
        0.0, "the same for the gradient norm (0: off)")
    skip_warmup: int = help_field(
        64, "steps of statistics the spike guard gathers before it may skip (2 to 64; the "
        "running mean and deviation are over the last 64 steps)")
    # evaluation, logging
    eval_interval: int = help_field(
        100, "evaluate, checkpoint and redraw loss.png every this many steps")
    eval_iters: int = help_field(8, "batches per split in each evaluation")
    eval_only: bool = help_field(False, "evaluate the --init_from weights and exit")
    # zero-shot tasks at every evaluation (gpt_jax/evaluation/task_evals.py): metrics.jsonl eval_task rows
    eval_tasks: str = help_field(
        "", "tasks scored at every evaluation, e.g. hellaswag=PATH,lambada=PATH (also text=PATH; "
        "a name without =PATH downloads the standard file)")
    eval_task_limit: int = help_field(
        0, "score the first N rows of each eval task (text: tokens); 0: all")
    log_interval: int = help_field(5, "steps between metrics.jsonl train rows")
    # trackers and traces (gpt_jax/train/tracking.py, gpt_jax/train/profiling.py); process 0 writes
    log_to: str = help_field(
        "jsonl", "where the metrics go, comma-separated: jsonl (always), tensorboard "
        "(out_dir/tensorboard), wandb (out_dir/wandb; WANDB_MODE=offline works offline)")
    profile_steps: str = help_field(
        "", "START:END: a jax.profiler trace of the updates from step START to END into "
        "out_dir/profile (TensorBoard, Perfetto), e.g. 10:15; empty: off")
    seed: int = help_field(1337, "parameter init, dropout and batch sampling")
    # parallelism and memory: none of them changes the losses (up to rounding)
    mesh: str = help_field(
        "", "device mesh over data and fsdp, e.g. data=2,fsdp=4 or fsdp=-1 (one size may be "
        "-1; default: all devices on data); fsdp shards parameters and Adam state")
    remat: bool = help_field(
        False, "recompute each block's activations in the backward pass (less memory)")
    scan_layers: bool = help_field(
        False, "one compiled block scanned over stacked layers (faster compiles)")

    def __post_init__(self):
        for name in self.fields():   # each key by its own rules, then how they fit together
            if name not in MODEL_FIELDS:
                check_key(name, getattr(self, name))
        if self.resume_step != -1 and self.init_from != "resume":
            raise ConfigError(f"resume_step {self.resume_step} needs init_from resume (it picks "
                              f"the checkpoint in out_dir to continue from)")
        if self.learning_rate <= 0 or self.min_lr > self.learning_rate:
            raise ConfigError(f"need 0 < min_lr <= learning_rate, got learning_rate="
                              f"{self.learning_rate}, min_lr={self.min_lr}")
        check_schedule_and_guard(self)
        if self.eval_task_limit and not self.eval_tasks.strip():
            raise ConfigError(f"eval_task_limit {self.eval_task_limit} needs eval_tasks (the "
                              f"tasks it limits), e.g. --eval_tasks hellaswag=PATH")
        parse_profile_steps(self.profile_steps, self.max_iters)
        if self.lr_decay_iters <= self.warmup_iters:
            raise ConfigError(f"lr_decay_iters ({self.lr_decay_iters}) must exceed "
                              f"warmup_iters ({self.warmup_iters})")
        check_model(self.model)

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        """Every flat key (a flag, a config-file key) and its dataclass field, in --help order:
        the model's keys are GPTConfig's own fields, with their help."""
        model = {f.name: f for f in dataclasses.fields(GPTConfig)}
        out = {}
        for f in dataclasses.fields(cls):
            out.update({k: model[k] for k in MODEL_FIELDS} if f.name == "model" else {f.name: f})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """From flat keys (a config file, meta["train_config"]); the rest keep their defaults."""
        unknown = sorted(set(d) - set(cls.fields()))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; allowed: {', '.join(cls.fields())}")
        return cls().replace(**d)

    def to_dict(self) -> dict[str, Any]:
        """The flat keys and their values."""
        return {k: getattr(self.model if k in MODEL_FIELDS else self, k) for k in self.fields()}

    def replace(self, **changes) -> "TrainConfig":
        """A copy with flat keys changed (model keys go into the GPTConfig)."""
        model = {k: changes.pop(k) for k in MODEL_FIELDS if k in changes}
        if "dtype" in model and model["dtype"] not in TRAIN_DTYPES:   # before GPTConfig's
            raise ConfigError(f"dtype must be {' or '.join(TRAIN_DTYPES)} (float16 would need "
                              f"loss scaling), got {model['dtype']!r}")    # wider list
        if model:
            changes["model"] = self.model.replace(**model)
        return dataclasses.replace(self, **changes)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps * self.model.block_size


def wsd_decay_start(tc: "TrainConfig") -> int:
    """The first step of wsd's decay: floor((1 - decay_frac) * lr_decay_iters) (llm.c:
    (int)(0.8f * train_num_batches) with decay_frac 0.2)."""
    return math.floor((1.0 - tc.decay_frac) * tc.lr_decay_iters + 1e-9)


def check_schedule_and_guard(tc: "TrainConfig") -> None:
    """wsd's decay window against the warm-up (each key's own range: check_key)."""
    if tc.lr_schedule == "wsd" and (wsd_decay_start(tc) < tc.warmup_iters
                                    or wsd_decay_start(tc) >= tc.lr_decay_iters):
        raise ConfigError(f"wsd's decay would start at step {wsd_decay_start(tc)} (the last "
                          f"decay_frac {tc.decay_frac} of lr_decay_iters {tc.lr_decay_iters}), "
                          f"which must be after warmup_iters ({tc.warmup_iters}) and before "
                          f"lr_decay_iters: change --decay_frac")


POSITIVE_INTS = ("batch_size", "gradient_accumulation_steps", "lr_decay_iters", "eval_interval",
                 "eval_iters", "log_interval")
NON_NEGATIVE_INTS = ("max_iters", "warmup_iters", "seed")
RATES = ("learning_rate", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip", "decay_frac",
         "skip_loss_z", "skip_grad_z")   # finite, non-negative
BOOLS = ("eval_only", "remat", "scan_layers")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_key(name: str, v) -> None:
    """One flat key's value by its own rules (type and range), whatever the other keys hold:
    what a config file's value must pass even where a flag overrides it. How keys fit
    together (min_lr <= learning_rate, wsd's window, ...) is TrainConfig's check."""
    if name in MODEL_FIELDS:
        if name == "dtype" and v not in TRAIN_DTYPES:
            raise ConfigError(f"dtype must be {' or '.join(TRAIN_DTYPES)} (float16 would need "
                              f"loss scaling), got {v!r}")
        # GPTConfig's own rules; n_head and n_embd with a partner that divides evenly
        partner = {"n_head": {"n_embd": v}, "n_embd": {"n_head": 1}}.get(name, {})
        if name in ("n_head", "n_embd") and not _is_int(v):
            partner = {}
        GPTConfig(**{name: v, **partner})
    elif name in ("out_dir", "data", "init_from"):
        if not isinstance(v, str) or not v.strip():
            raise ConfigError(f"{name} must be a non-empty string (a path or a name), got {v!r}")
    elif name in POSITIVE_INTS:
        if not _is_int(v) or v <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    elif name in NON_NEGATIVE_INTS:
        if not _is_int(v) or v < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if name == "seed" and v > MAX_SEED:   # JAX keys keep 32 bits: larger seeds would alias
            raise ConfigError(f"seed must be at most {MAX_SEED}, got {v}")
    elif name == "resume_step":
        if not _is_int(v) or v < -1:
            raise ConfigError(f"resume_step must be a checkpoint step (or -1 for the latest), "
                              f"got {v!r}")
    elif name in RATES:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < 0:
            raise ConfigError(f"{name} must be a finite non-negative number, got {v!r}")
        if name in ("beta1", "beta2") and not v < 1:
            raise ConfigError("beta1 and beta2 must be below 1")
        if name == "decay_frac" and not 0 < v <= 1:
            raise ConfigError(f"decay_frac must be in (0, 1], got {v}")
    elif name == "lr_schedule":
        if v not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {v!r}")
    elif name == "skip_warmup":
        if not _is_int(v) or not 2 <= v <= WINDOW:
            raise ConfigError(f"skip_warmup must be an integer from 2 to {WINDOW} (steps of "
                              f"statistics before the spike guard may skip), got {v!r}")
    elif name == "eval_tasks":
        parse_spec(v)
    elif name == "eval_task_limit":
        if not _is_int(v) or v < 0:
            raise ConfigError(f"eval_task_limit must be a non-negative integer (0: all rows), "
                              f"got {v!r}")
    elif name == "log_to":
        parse_log_to(v)
    elif name == "profile_steps":
        parse_profile_steps(v)
    elif name in BOOLS:
        if not isinstance(v, bool):
            raise ConfigError(f"{name} must be true or false, got {v!r}")
    elif name == "mesh":
        if not isinstance(v, str):
            raise ConfigError(f"mesh must be a string such as data=-1 or data=2,fsdp=4, "
                              f"got {v!r}")
        check_mesh_grammar(v)


def check_mesh_grammar(spec: str) -> None:
    """--mesh's grammar, before any device exists (the device count is checked when the mesh
    is built)."""
    parse_mesh(spec, None)


def check_model(model: GPTConfig) -> None:
    """What a run can train: a GPTConfig (which checks itself) in float32 or bfloat16, whose
    fields outside MODEL_FIELDS keep their defaults (flags and meta["train_config"] do not
    carry them)."""
    if not isinstance(model, GPTConfig):
        raise ConfigError(f"model must be a GPTConfig, got {type(model).__name__}")
    if model.dtype not in TRAIN_DTYPES:
        raise ConfigError(f"dtype must be {' or '.join(TRAIN_DTYPES)} (float16 would need "
                          f"loss scaling), got {model.dtype!r}")
    if model != GPTConfig(**{k: getattr(model, k) for k in MODEL_FIELDS}):
        raise ConfigError(f"a run sets only the model fields {', '.join(MODEL_FIELDS)}; the "
                          f"others keep their defaults")


# Built-in --config values: overrides on top of the defaults (= cpu-small).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": {},
    # GPT-2 small's shape with nanoGPT's config/train_gpt2.py settings (GPT-3's optimizer
    # recipe; the GPT-2 paper publishes none, docs/level3.md): ~0.5M tokens per step
    # (16 x 1024 x 32 = 524,288), AdamW 6e-4 -> 6e-5 over 600k steps after 2000 warm-up steps,
    # bfloat16 compute, the vocabulary padded to 50304. Meant for a GPU and OpenWebText/FineWeb
    # prepared with prepare.py --hf_dataset; --max_iters trades quality for time.
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304,
                      batch_size=16, gradient_accumulation_steps=32, max_iters=600_000,
                      learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000,
                      lr_decay_iters=600_000, eval_interval=1000, eval_iters=100,
                      log_interval=10, dtype="bfloat16", out_dir="out-gpt2-124m"),
}


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
    """A built-in config's keys, or a file's, each value checked as read: a flag that
    overrides a key does not hide a bad value of it in the file."""
    if config in TRAIN_PRESETS:
        return dict(TRAIN_PRESETS[config])
    base = load_config_file(config)
    fields = TrainConfig.fields()
    unknown = sorted(set(base) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config {config}; allowed: "
                          f"{', '.join(fields)}")
    base = _floats(base)
    for k, v in base.items():
        try:
            check_key(k, v)
        except ConfigError as e:
            what = str(e).replace("GPTConfig.", "")
            raise ConfigError(f"config file {config}: {what}") from None
    return base


def _floats(d: dict[str, Any]) -> dict[str, Any]:
    """TOML/JSON give ints for floats like 1: accept them for float keys."""
    fields, out = TrainConfig.fields(), dict(d)
    for k, v in d.items():
        if fields[k].type == "float" and isinstance(v, int) and not isinstance(v, bool):
            try:
                out[k] = float(v)
            except OverflowError:
                raise ConfigError(f"{k} must be a finite number, got {v}") from None
    return out


def resolve_config(config: str = "cpu-small", overrides: Optional[dict] = None) -> TrainConfig:
    """defaults < --config (a built-in name or a .json/.toml file) < flags (overrides)."""
    merged = {**_base_config(config),
              **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return TrainConfig.from_dict(_floats(merged))


def given_fields(config: str = "cpu-small", overrides: Optional[dict] = None) -> set[str]:
    """The flat keys the user set: flags, and the keys of --config (a file, or a built-in
    preset). Only these may conflict with a checkpoint's architecture."""
    return set(_base_config(config)) | {k for k, v in (overrides or {}).items() if v is not None}


def format_config(tc: TrainConfig) -> str:
    return "\n".join(f"  {k:<28} {v!r}" for k, v in tc.to_dict().items())
