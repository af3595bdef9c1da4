"""What a run starts from (--init_from): fresh weights, a checkpoint to resume (or only to
evaluate), a Hugging Face GPT-2, or another run's latest weights. Each builder RETURNS a Start:
the run config (its architecture taken from loaded weights), the model config, the TrainState
on the mesh, its shardings, and the restored checkpoint's meta (None for a new run).

Checkpoints hold the GPT-2 layout on whatever mesh saved them: they are restored straight into
this mesh's shards, then put in the run's layout (gpt_jax/train/state.py).
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple, Optional

import jax

import gpt_jax.checkpoint.manager as ckpt
from gpt_jax.model.config import GPTConfig
from gpt_jax.errors import CheckpointError, ConfigError
from gpt_jax.checkpoint.hf import from_hf
from gpt_jax.checkpoint.hf_files import KNOWN_MODELS, hub_name_ok
from gpt_jax.model.sharding import tree_shardings
from gpt_jax.train.state import (TrainState, abstract_state, new_state, place_params, place_state,
                           state_shardings)
from gpt_jax.train.config import TrainConfig

ARCHITECTURE = ("n_layer", "n_head", "n_embd", "vocab_size", "bias", "norm", "tie_embeddings",
                "causal", "final_ln")   # + block_size
RESUME_HINT = "continue from the latest with --resume_step {step}"
# run keys a resumed run takes from its checkpoint's train config unless given again: the
# learning-rate schedule and the spike guard, so that an exact resume needs only
# --init_from resume (a key given again wins)
RUN_KEYS = ("lr_schedule", "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters",
            "decay_frac", "skip_loss_z", "skip_grad_z", "skip_warmup")


class Start(NamedTuple):
    tc: TrainConfig                # with the architecture of the weights it loaded
    cfg: GPTConfig                 # the model the run computes with
    state: TrainState              # on the mesh, in the run's layout
    shardings: TrainState          # where each leaf of state lives
    meta: Optional[dict]           # the resumed checkpoint's meta (None: a new run)


# -- checks, before anything is downloaded, tokenised or compiled ---------------------------

def check_init_from(source: str) -> None:
    if source in ("scratch", "resume") or os.path.isdir(source) or hub_name_ok(source):
        return
    raise ConfigError(
        f"--init_from {source!r} is not scratch, resume, a directory (a train.py out_dir "
        f"or a Hugging Face GPT-2 dir), a known model name ({', '.join(KNOWN_MODELS)}) or "
        f"an org/name hub id")


def check_steps_left(tc: TrainConfig, start: int, where: str) -> None:
    """A run with nothing to train is an error, said before anything compiles."""
    if tc.eval_only or tc.max_iters > start:
        return
    if start == 0:
        raise ConfigError("--max_iters 0 trains nothing: pass --max_iters N (optimizer "
                          "steps), or --eval_only true to only evaluate")
    raise ConfigError(f"{where} is at step {start} and --max_iters is {tc.max_iters}: "
                      f"nothing to train; pass a --max_iters above {start} to continue "
                      f"(--max_iters counts steps from the start of the run)")


def check_no_checkpoints(tc: TrainConfig) -> None:
    """A new run never writes over an out_dir's checkpoints (checked before any download)."""
    existing = ckpt.latest_step(tc.out_dir)
    if existing is None:
        return
    if tc.init_from == "scratch":
        how = ("continue with --init_from resume, or pass another --out_dir (or delete it) to "
               "start from scratch")
    else:
        how = f"pass another --out_dir to fine-tune from {tc.init_from}"
    raise CheckpointError(f"{tc.out_dir} already holds checkpoints (latest step {existing}): "
                          f"{how}")


# -- the architecture of loaded weights ------------------------------------------------------

def adopt_architecture(tc: TrainConfig, found: GPTConfig, explicit: set, source: str,
                       window: Optional[int] = None) -> tuple[TrainConfig, GPTConfig]:
    """(tc, model cfg) with the architecture of weights loaded from `source` (a checkpoint, an
    HF dir): a key the user set (`explicit`) that differs is an error; the rest are taken from
    the weights. block_size is the training window: at most the model's context; by default
    `window` (the resumed run's) or the model's context. dropout and dtype stay the run's."""
    model = tc.model
    conflicts = [f"{k}: {getattr(found, k)} vs {getattr(model, k)}" for k in ARCHITECTURE
                 if k in explicit and getattr(model, k) != getattr(found, k)]
    if "block_size" in explicit and model.block_size > found.block_size:
        conflicts.append(f"block_size: {found.block_size} vs {model.block_size} (the training "
                         f"window can be at most the model's context)")
    if conflicts:
        raise CheckpointError(
            f"the weights from {source} do not match the architecture flags given "
            f"(weights vs flags: {'; '.join(conflicts)}); drop those flags: the "
            f"architecture comes from the weights")
    block = model.block_size
    if "block_size" not in explicit:
        block = min(window or found.block_size, found.block_size)
    tc = tc.replace(block_size=block, **{k: getattr(found, k) for k in ARCHITECTURE})
    return tc, found.replace(dropout=model.dropout, dtype=model.dtype)


def arch_summary(tc: TrainConfig) -> str:
    m = tc.model
    return (f"n_layer={m.n_layer} n_head={m.n_head} n_embd={m.n_embd} "
            f"vocab_size={m.vocab_size} bias={m.bias} block_size={m.block_size}" +
            ("" if m.is_gpt2 else f" norm={m.norm} tie_embeddings={m.tie_embeddings} "
                                  f"causal={m.causal} final_ln={m.final_ln}") +
            ("" if m.init == "gpt2" else f" init={m.init}"))


# -- the builders ----------------------------------------------------------------------------

def build_scratch(tc: TrainConfig, tx, mesh) -> Start:
    """GPT-2 init from key(seed) and a fresh optimizer."""
    cfg, scan = tc.model, tc.scan_layers
    return Start(tc, cfg, new_state(cfg, tx, mesh, seed=tc.seed, scan_layers=scan),
                 state_shardings(cfg, tx, mesh, scan_layers=scan), None)


def _from_weights(tc: TrainConfig, params, found: GPTConfig, tx, mesh, explicit: set,
                  log: Callable) -> Start:
    """Loaded weights (GPT-2 layout) and a fresh optimizer; the architecture from the weights."""
    tc, cfg = adopt_architecture(tc, found, explicit, tc.init_from)
    log(f"architecture from {tc.init_from}: {arch_summary(tc)}")
    scan = tc.scan_layers
    return Start(tc, cfg, new_state(cfg, tx, mesh, seed=tc.seed, params=params, scan_layers=scan),
                 state_shardings(cfg, tx, mesh, scan_layers=scan), None)


def build_from_hf(tc: TrainConfig, tx, mesh, explicit: set, log: Callable) -> Start:
    """A Hugging Face GPT-2 directory or hub name (a fine-tune)."""
    params, found = from_hf(tc.init_from)
    log(f"initialised from {tc.init_from}")
    return _from_weights(tc, params, found, tx, mesh, explicit, log)


def build_from_run(tc: TrainConfig, tx, mesh, explicit: set, log: Callable) -> Start:
    """Another train.py out_dir: the weights of its latest checkpoint, not its optimizer."""
    source = tc.init_from
    r = ckpt.restore(source, step_hint=f"start from the latest: python -m gpt_jax.hf export "
                                       f"{source} HF_DIR --step {{step}}, then --init_from HF_DIR")
    log(f"initialised from {source} (step {r['step']}), a fresh optimizer")
    return _from_weights(tc, r["params"], r["config"], tx, mesh, explicit, log)


def _resume_point(tc: TrainConfig, tx, mesh, explicit: set):
    """(tc, cfg, step, restore targets) of the checkpoint in out_dir to continue from; the
    targets are the GPT-2 layout, sharded by the same rule as the run."""
    step, found, meta = ckpt.read_header(tc.out_dir, None if tc.resume_step < 0 else
                                         tc.resume_step, step_hint=RESUME_HINT)
    window = (meta.get("train_config") or {}).get("block_size")
    tc, cfg = adopt_architecture(tc, found, explicit,
                                 f"{ckpt.checkpoint_dir(tc.out_dir)} (step {step})",
                                 window=window if isinstance(window, int) else None)
    saved_tc = meta.get("train_config") or {}
    tc = tc.replace(**{k: saved_tc[k] for k in RUN_KEYS if k in saved_tc and k not in explicit})
    check_steps_left(tc, step, f"the checkpoint in {tc.out_dir}")
    saved = abstract_state(cfg, tx)
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
    targets = jax.tree_util.tree_map(with_sharding, saved, tree_shardings(saved, mesh))
    return tc, cfg, step, targets


def build_resume(tc: TrainConfig, tx, mesh, explicit: set, log: Callable) -> Start:
    """The checkpoint in out_dir (the latest, or --resume_step): params, optimizer state,
    step, RNG key and the meta the sampler and clock continue from."""
    tc, cfg, step, saved = _resume_point(tc, tx, mesh, explicit)
    shardings = state_shardings(cfg, tx, mesh, scan_layers=tc.scan_layers)
    r = ckpt.restore(tc.out_dir, step, params_target=saved.params,
                     opt_state_target=saved.opt_state, step_hint=RESUME_HINT)
    log(f"resuming from {ckpt.checkpoint_dir(tc.out_dir)} at step {r['step']} "
        f"({arch_summary(tc)})")
    state = place_state(r["params"], r["opt_state"], r["step"], r["meta"]["rng"], shardings,
                        cfg=cfg, scan_layers=tc.scan_layers, guard=r["meta"].get("guard"))
    return Start(tc, cfg, state, shardings, r["meta"])


def build_eval_only(tc: TrainConfig, tx, mesh, explicit: set) -> Start:
    """Only the params of the checkpoint in out_dir (no optimizer state is read)."""
    tc, cfg, step, saved = _resume_point(tc, tx, mesh, explicit)
    shardings = state_shardings(cfg, tx, mesh, scan_layers=tc.scan_layers)
    r = ckpt.restore(tc.out_dir, step, params_target=saved.params, step_hint=RESUME_HINT)
    params = place_params(r["params"], shardings.params, cfg=cfg, scan_layers=tc.scan_layers)
    state = TrainState(step=None, params=params, opt_state=None, rng=None)
    return Start(tc, cfg, state, shardings, None)


def build(tc: TrainConfig, tx, mesh, explicit: set, log: Callable) -> Start:
    """The Start that --init_from (and --eval_only) ask for."""
    if tc.init_from == "resume":
        if tc.eval_only:
            return build_eval_only(tc, tx, mesh, explicit)
        return build_resume(tc, tx, mesh, explicit, log)
    if not tc.eval_only:
        check_no_checkpoints(tc)
    if tc.init_from == "scratch":
        return build_scratch(tc, tx, mesh)
    if os.path.isdir(ckpt.checkpoint_dir(tc.init_from)):
        return build_from_run(tc, tx, mesh, explicit, log)
    return build_from_hf(tc, tx, mesh, explicit, log)
