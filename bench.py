"""Benchmarks: python bench.py [--only machine,forward] [--json out.json] [--preset gpt2] ...

Prints a table; --json writes DESIGN.md's bench JSON. See gpt_jax/bench.py for the method.
"""
import argparse
import os
import sys


def parse_args(argv=None):
    from gpt_jax.cli import ArgumentParser
    p = ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None,
                   help="comma-separated sections to run (default: all)")
    p.add_argument("--json", default=None, help="write results as JSON to this path")
    p.add_argument("--plot", default=None, help="draw the results as a PNG chart at this path")
    p.add_argument("--peers", default="true", choices=["true", "false"],
                   help="time Hugging Face PyTorch peers where torch/transformers are installed")
    p.add_argument("--preset", default="gpt2", help="model preset for the model sections")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tiny", action="store_true",
                   help="smoke-test sizes (small matrices and vocab): checks the harness only")
    p.add_argument("--train_gpt2", default="true", choices=["true", "false"],
                   help="train section: also time GPT-2-small widths (batch 4, block 256)")
    p.add_argument("--torch_threads", type=int, default=None,
                   help="threads for the PyTorch peers (default: the CPU count)")
    p.add_argument("--device", default=None, choices=["cpu", "gpu", "tpu"],
                   help="JAX platform (default: JAX's choice)")
    return p.parse_args(argv)


def main():
    args = parse_args()
    if args.device:
        os.environ["JAX_PLATFORMS"] = "cuda" if args.device == "gpu" else args.device
    from gpt_jax import bench
    from gpt_jax.errors import UserError
    if args.repeats < 1 or args.batch_size < 1 or args.seq_len < 1:
        raise UserError("--repeats, --batch_size and --seq_len must be positive")
    ctx = bench.Context(repeats=args.repeats, warmup=args.warmup, preset=args.preset,
                        batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
                        tiny=args.tiny, options={"torch_threads": args.torch_threads})
    ctx.options["train_gpt2"] = args.train_gpt2 == "true"
    ctx.options["peers"] = args.peers == "true"
    ctx.config()  # validates --preset and --dtype with a one-line error
    names = args.only.split(",") if args.only else list(bench.SECTIONS)
    results = bench.run_sections(ctx, [n.strip() for n in names if n.strip()])
    print(bench.format_table(results))
    if args.json:
        bench.write_json(args.json, results)
        print(f"[bench] wrote {args.json}", file=sys.stderr)
    if args.plot:
        bench.write_plot(args.plot, results)
        print(f"[bench] wrote {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    from gpt_jax.cli import run
    run(main)
