"""Training: the config, the optimizer and its schedules, the state, the one jitted step, the
loss, the spike guard and health metrics, and the trainer with its I/O (what a run starts from,
how it ends, metrics, trackers, the profiler).

    config.py     TrainConfig (flags, files, checkpoints), presets, LR schedule names
    optimizer.py  AdamW + schedule + clipping + decay mask (optax)
    state.py      TrainState, built on a mesh       steps.py   make_train_step / make_eval_step
    loss.py       next-token cross-entropy          guard.py   the spike guard
    health.py     per-layer gradient/param norms    metrics.py metrics.jsonl, loss.png
    tracking.py   --log_to: TensorBoard, W&B        profiling.py --profile_steps
    start.py      scratch / resume / eval-only / HF / another run
    trainer.py    the training loop                 end.py     how a run ends
"""
from gpt_jax.train.config import TRAIN_PRESETS, TrainConfig
from gpt_jax.train.loss import cross_entropy, loss_fn
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.train.state import TrainState, new_state
from gpt_jax.train.steps import make_eval_step, make_train_step
from gpt_jax.train.trainer import Trainer

__all__ = ["TRAIN_PRESETS", "TrainConfig", "TrainState", "Trainer", "cross_entropy", "loss_fn",
           "make_eval_step", "make_optimizer", "make_train_step", "new_state"]
