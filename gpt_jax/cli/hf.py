"""`python -m gpt_jax.hf export OUT_DIR HF_DIR`: a train.py checkpoint as a Hugging Face directory."""
from gpt_jax.checkpoint.hf import check_target, to_hf
from gpt_jax.checkpoint.manager import restore
from gpt_jax.cli.common import ArgumentParser, run
from gpt_jax.utils.paths import writable_dir


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m gpt_jax.hf",
                       description="Hugging Face GPT-2 import/export.")
    sub = p.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="a train.py checkpoint -> a Hugging Face directory")
    ex.add_argument("out_dir", help="train.py out_dir (holds checkpoints/)")
    ex.add_argument("hf_dir", help="new or empty directory to write config.json + "
                                   "model.safetensors to")
    ex.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    ex.add_argument("--overwrite", action="store_true",
                    help="replace config.json and model.safetensors in a non-empty hf_dir")
    args = p.parse_args(argv)
    check_target(args.hf_dir, args.overwrite)   # before reading a large checkpoint

    r = restore(args.out_dir, args.step, step_hint="export the latest with --step {step}")
    params, cfg = r["params"], r["config"]
    writable_dir(args.hf_dir, "hf_dir")
    to_hf(params, cfg, args.hf_dir, overwrite=args.overwrite)
    print(f"wrote {args.hf_dir} (config.json, model.safetensors: {cfg.n_layer} layers, "
          f"n_embd {cfg.n_embd}, vocab {cfg.n_real_vocab}) from step {r['step']}")
    return 0


def entry() -> None:
    """The console script and `python -m gpt_jax.cli.hf`."""
    run(main)


if __name__ == "__main__":
    entry()
