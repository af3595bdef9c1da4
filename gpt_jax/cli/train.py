"""Train a GPT: python train.py [--config cpu-small|gpt2-124m|FILE.json|FILE.toml] [--key value ...]

With no flags: the `cpu-small` config on the built-in corpus (Python's standard library,
tokenised into data/builtin on first use), a few minutes on a laptop CPU; writes out/ with
checkpoints/, metrics.jsonl and loss.png, which `python sample.py` reads. Precedence:
defaults < --config < flags. Every flag is a TrainConfig key (gpt_jax/train/config.py), except
the multi-host launch flags.

Several processes (hosts): run the same command in each with --coordinator_address HOST:PORT
(where process 0 listens), --num_processes N and --process_id i, or the environment
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (GPT_JAX_DISTRIBUTED=1 on clusters
that JAX detects by itself; GPT_JAX_DISTRIBUTED_TIMEOUT=seconds bounds start-up). --mesh then
spans the devices of all processes; only process 0 prints and writes metrics.
"""
import argparse
import sys

# Launch settings, not training hyperparameters: kept out of TrainConfig, config files and
# checkpoints (a resumed run may use another cluster).
LAUNCH_FLAGS = {
    "coordinator_address": (str, "HOST:PORT", "multi-host: where process 0's coordinator "
                            "listens (env JAX_COORDINATOR_ADDRESS)"),
    "num_processes": (int, "INT", "multi-host: number of processes (env JAX_NUM_PROCESSES)"),
    "process_id": (int, "INT", "multi-host: this process's index; 0 logs (env JAX_PROCESS_ID)"),
}


def check_dash_values(argv) -> None:
    """argparse reads a value that starts with '-' (--profile_steps -1:3) as an option and
    says only "expected one argument": say what the flag takes instead."""
    from gpt_jax.errors import UserError
    for flag, value in zip(argv, argv[1:]):
        if flag == "--profile_steps" and value.startswith("-") and value[1:2].isdigit():
            raise UserError(f"--profile_steps {value}: the window must be non-negative steps "
                            f"START:END with 0 <= START < END, e.g. 10:15")


def parse_args(argv=None):
    """-> (config, TrainConfig overrides, launch settings)."""
    import functools
    check_dash_values(sys.argv[1:] if argv is None else list(argv))
    from gpt_jax.cli.common import ArgumentParser, seed, str2bool
    from gpt_jax.train.config import MAX_SEED, TRAIN_PRESETS, TrainConfig
    p = ArgumentParser(prog="train.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cpu-small",
                   help=f"built-in ({', '.join(TRAIN_PRESETS)}) or a .json/.toml file")
    types = {"bool": str2bool, "int": int, "float": float, "str": str}
    defaults = TrainConfig().to_dict()
    for name, field in TrainConfig.fields().items():
        type_ = functools.partial(seed, maximum=MAX_SEED) if name == "seed" else types[field.type]
        # default None: only flags given on the command line override --config
        p.add_argument(f"--{name}", type=type_, default=None, metavar=field.type.upper(),
                       help=f"{field.metadata['help']} (default {defaults[name]!r})")
    for name, (type_, metavar, help_) in LAUNCH_FLAGS.items():
        p.add_argument(f"--{name}", type=type_, default=None, metavar=metavar, help=help_)
    args = vars(p.parse_args(argv))
    launch = {k: args.pop(k) for k in LAUNCH_FLAGS}
    return args.pop("config"), args, launch


def check_launch(coordinator_address=None, num_processes=None, process_id=None):
    """Launch flags that would be ignored or fail deep inside jax.distributed: one line."""
    import os
    from gpt_jax.errors import UserError
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num_processes must be at least 1, got {num_processes}")
    if process_id is not None and (process_id < 0 or (num_processes is not None
                                                      and process_id >= num_processes)):
        raise UserError(f"--process_id must be in [0, --num_processes), got {process_id}")
    coordinator = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    auto = os.environ.get("GPT_JAX_DISTRIBUTED", "").lower() in ("1", "true")
    if (num_processes is not None or process_id is not None) and not (coordinator or auto):
        raise UserError("--num_processes and --process_id need --coordinator_address HOST:PORT "
                        "(or JAX_COORDINATOR_ADDRESS) too: without it they would be ignored")


def unused_flags(tc, given: set, start: int) -> list[str]:
    """Flags the run would drop without a word (tc: the run's resolved config, given: the keys
    the user set, start: the step it starts from): one warning line each."""
    out = []
    if "skip_warmup" in given and not (tc.skip_loss_z or tc.skip_grad_z):
        out.append(f"--skip_warmup {tc.skip_warmup} does nothing while the spike guard is off: "
                   f"pass --skip_loss_z or --skip_grad_z (e.g. 5) to turn it on")
    if "decay_frac" in given and tc.lr_schedule != "wsd":
        out.append(f"--decay_frac {tc.decay_frac} does nothing with --lr_schedule "
                   f"{tc.lr_schedule}: it sets wsd's decay (pass --lr_schedule wsd)")
    if "log_to" in given and tc.eval_only:
        out.append(f"--log_to {tc.log_to} does nothing with --eval_only, which writes no "
                   f"metrics: the losses are printed only")
    if tc.profile_steps.strip() and not tc.eval_only:
        from gpt_jax.train.profiling import parse_profile_steps
        first, last = parse_profile_steps(tc.profile_steps)
        if last <= start:
            out.append(f"--profile_steps {tc.profile_steps} traces nothing: this run resumes at "
                       f"step {start}, after the window (pass a window from step {start} on)")
    return out


def main(argv=None):
    config, overrides, launch = parse_args(argv)
    check_launch(**launch)
    # Before anything touches a device: jax.distributed must start first.
    from gpt_jax.model.sharding import is_main_process, maybe_initialize_distributed
    maybe_initialize_distributed(**launch)
    from gpt_jax.train.config import format_config, given_fields, resolve_config
    from gpt_jax.train.trainer import Trainer
    tc = resolve_config(config, overrides)
    say = print if is_main_process() else (lambda *a, **k: None)
    if tc.eval_only and tc.init_from == "scratch":
        from gpt_jax.errors import UserError
        raise UserError("--eval_only needs weights: --init_from resume (a checkpoint in "
                        "--out_dir), gpt2* or a Hugging Face directory")
    given = given_fields(config, overrides)
    trainer = Trainer(tc, explicit=given)
    step = getattr(trainer.state, "step", None)   # None: eval-only weights
    for line in unused_flags(trainer.tc, given, 0 if step is None else int(step)):
        if is_main_process():
            print(f"warning: {line}", file=sys.stderr, flush=True)
    # printed once the weights are known: resume and fine-tunes take their architecture
    # from the weights, so the flags alone would not say what runs
    say(f"config ({config} + flags):\n{format_config(trainer.tc)}", flush=True)
    if tc.eval_only:
        trainer.evaluate_only()
        return 0
    out = trainer.fit()
    where = f"{tc.out_dir}/checkpoints"
    if out.get("stopped_by_signal"):
        saved = out.get("saved_step")
        say(f"stopped at step {out['step']} "
            + (f"(latest checkpoint: step {saved} in {where})" if saved is not None
               else "(no checkpoint saved)"), flush=True)
    else:
        say(f"done: step {out['step']}, val loss {out['val_loss']:.4f}, "
            f"{out['elapsed']:.0f}s of training; checkpoints in {where}", flush=True)
    return 0


def entry() -> None:
    """The console script (gpt-jax-train) and `python -m gpt_jax.cli.train`."""
    from gpt_jax.cli.common import run
    run(main)


if __name__ == "__main__":
    entry()
