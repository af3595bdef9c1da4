"""Train a GPT: python train.py [--config cpu-small|gpt2-124m|FILE.json|FILE.toml] [--key value ...]

With no flags: the `cpu-small` config on the built-in corpus (Python's standard library,
tokenised into data/builtin on first use), a few minutes on a laptop CPU; writes out/ with
checkpoints/, metrics.jsonl and loss.png, which `python sample.py` reads. Precedence:
defaults < --config < flags. Every flag is a TrainConfig field (gpt_jax/train.py).
"""
import argparse
import sys


def parse_args(argv=None):
    from gpt_jax.cli import str2bool
    from gpt_jax.train import HELP, TRAIN_PRESETS, TrainConfig
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cpu-small",
                   help=f"built-in ({', '.join(TRAIN_PRESETS)}) or a .json/.toml file")
    types = {"bool": str2bool, "int": int, "float": float, "str": str}
    defaults = TrainConfig()
    for name, field in TrainConfig.fields().items():
        # default None: only flags given on the command line override --config
        p.add_argument(f"--{name}", type=types[field.type], default=None,
                       metavar=field.type.upper(),
                       help=f"{HELP[name]} (default {getattr(defaults, name)!r})")
    args = p.parse_args(argv)
    return args.config, {k: v for k, v in vars(args).items() if k != "config"}


def main(argv=None):
    config, overrides = parse_args(argv)
    from gpt_jax.trainer import Trainer, format_config, resolve_config
    tc = resolve_config(config, overrides)
    print(f"config ({config} + flags):\n{format_config(tc)}", flush=True)
    if tc.eval_only and tc.init_from == "scratch":
        from gpt_jax.errors import UserError
        raise UserError("--eval_only needs weights: --init_from resume (a checkpoint in "
                        "--out_dir), gpt2* or a Hugging Face directory")
    trainer = Trainer(tc)
    if tc.eval_only:
        trainer.evaluate_only()
        return 0
    out = trainer.fit()
    if out.get("stopped_by_signal"):
        print(f"stopped at step {out['step']} (checkpoint saved)", flush=True)
    elif out.get("val_loss") is not None:
        print(f"done: step {out['step']}, val loss {out['val_loss']:.4f}, "
              f"{out['elapsed']:.0f}s of training; checkpoints in {tc.out_dir}/checkpoints",
              flush=True)
    return 0


if __name__ == "__main__":
    from gpt_jax.cli import run
    run(main)
