"""Benchmarks: python bench.py [--only machine,forward] [--json out.json] [--preset gpt2] ...

Prints a table; --json writes docs/design.md's bench JSON. The method: gpt_jax/lab/bench/harness.py.
Every flag is checked (and the --json / --plot / --table paths tried) before any section runs.

python bench.py --suite gpu [--json FILE] [--table README.md] runs a fixed recipe instead
(gpt_jax/lab/bench/suite.py): the GPU tests, then sections with their own sizes, and writes a
markdown table between README's <!-- gpu-table:start --> / <!-- gpu-table:end --> lines.
"""
import argparse
import os
import sys
import tempfile

DEVICES = {"cpu": "cpu", "gpu": "cuda", "tpu": "tpu"}  # --device -> JAX platform name


def parse_args(argv=None):
    from gpt_jax.cli.common import ArgumentParser, str2bool
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=None,
                   help="comma-separated sections to run (default: all)")
    p.add_argument("--suite", default=None, choices=["gpu"],
                   help="run a fixed recipe of tests and sections (gpt_jax/lab/bench/suite.py) "
                        "instead; its sizes are fixed, so --only, --preset, --dtype, "
                        "--batch_size, --seq_len and --train_gpt2 do not go with it")
    p.add_argument("--table", default=None,
                   help="with --suite: write its markdown table into this file, between its "
                        "<!-- NAME-table:start --> and <!-- NAME-table:end --> lines (a new "
                        "file gets them)")
    p.add_argument("--tests", type=str2bool, default=True,
                   help="with --suite: run its pytest selection first")
    p.add_argument("--json", default=None, help="write results as JSON to this path")
    p.add_argument("--compare", default=None, metavar="OLD.json",
                   help="also print each row's ratio against a run saved with --json (above 1 "
                        "is better) and flag the rows that lost more than the runs' own spread")
    p.add_argument("--plot", default=None, help="draw the results as a PNG chart at this path")
    p.add_argument("--peers", type=str2bool, default=None,
                   help="time Hugging Face PyTorch peers where torch/transformers are installed "
                        "(default true; with --suite gpu default false, and true times them "
                        "on the GPU in bfloat16, torch with CUDA)")
    p.add_argument("--preset", default=None,
                   help="model preset for the model sections (default gpt2)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="forward section: batch (default 8)")
    p.add_argument("--seq_len", type=int, default=None,
                   help="forward section: sequence length, at most the model's block_size "
                        "(default: block_size)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="compute dtype of the model sections (default float32)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (>= 0)")
    p.add_argument("--tiny", type=str2bool, nargs="?", const=True, default=False,
                   help="smoke-test sizes (small matrices and vocab): checks the harness only")
    p.add_argument("--train_gpt2", type=str2bool, default=None,
                   help="train section: also time GPT-2-small widths (batch 4, block 256; "
                        "default true)")
    p.add_argument("--compile_peers", type=str2bool, default=True,
                   help="with --peers: also time torch.compile'd PyTorch peers (train steps, "
                        "static-cache decoding); false, or no C++ compiler for torch on the "
                        "CPU, leaves a 'skipped' row with the reason")
    p.add_argument("--compile_mode", default="default",
                   choices=["default", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode of those peers (default: 'default', the faster "
                        "here: docs/benchmarks.md)")
    p.add_argument("--torch_threads", type=int, default=None,
                   help="threads for the PyTorch peers (default: the CPU count)")
    p.add_argument("--flax_python", default=None,
                   help="train section: the python of a side environment with transformers<5 "
                        "and flax (docs/benchmarks.md), to time HF Flax GPT-2's train step as "
                        "a peer in a separate process (default: skipped, with a note)")
    p.add_argument("--device", default=None, choices=list(DEVICES),
                   help="JAX platform (default: JAX's choice)")
    args = p.parse_args(argv)
    for name, least in (("repeats", 1), ("batch_size", 1), ("seq_len", 1), ("warmup", 0),
                        ("torch_threads", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            p.error(f"--{name} must be at least {least}, got {value}")
    fixed = ("only", "preset", "dtype", "batch_size", "seq_len", "train_gpt2")
    if args.suite:
        given = [f"--{k}" for k in fixed if getattr(args, k) is not None]
        if given:
            p.error(f"--suite {args.suite} runs fixed sizes: leave out {', '.join(given)}")
        if args.compare:
            p.error(f"--compare goes with a plain run (its rows against a saved one), not "
                    f"--suite {args.suite}")
    elif args.table:
        p.error("--table writes a suite's table: give --suite too")
    defaults = {"preset": "gpt2", "dtype": "float32", "batch_size": 8, "train_gpt2": True,
                "peers": not args.suite}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def check_output_path(path: str, flag: str) -> None:
    """Fail now, not after minutes of benchmarks, if `path` cannot be written: a directory,
    a missing or non-directory parent, or one we may not write in (tried with a temp file)."""
    from gpt_jax.errors import UserError
    if os.path.isdir(path):
        raise UserError(f"{flag} {path} is a directory: give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise UserError(f"{flag} {path}: {parent} {what}")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".bench-write-test-"):
            pass
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {parent} ({e.strerror or e})") from None


def use_device(device: str) -> None:
    """Select the JAX platform, and say so in one line when it is not available here."""
    import jax
    from gpt_jax.errors import UserError
    # The config, not JAX_PLATFORMS: importing gpt_jax has imported jax, which read the
    # environment already (no backend has started yet, so the setting still applies).
    jax.config.update("jax_platforms", DEVICES[device])
    try:
        jax.devices()
    except Exception as e:  # RuntimeError, or an AssertionError when the plugin is missing
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--device {device}: no {device} backend is available here "
                        f"({detail})") from None


def main():
    args = parse_args()
    from gpt_jax.errors import UserError
    for flag in ("json", "plot", "table"):
        if getattr(args, flag):
            check_output_path(getattr(args, flag), f"--{flag}")
    old = None
    if args.compare:   # read before minutes of benchmarks, not after
        from gpt_jax.lab.bench.compare import load_results
        old = load_results(args.compare)
    if args.suite:
        return main_suite(args)
    if args.device:
        use_device(args.device)
    if args.flax_python and args.peers:
        from gpt_jax.lab.bench.flax_peer import check_flax_python
        check_flax_python(args.flax_python)
    from gpt_jax.lab.bench import SECTIONS, run_sections
    from gpt_jax.lab.bench.forward import check_forward_memory
    from gpt_jax.lab.bench.harness import Context
    from gpt_jax.lab.bench.report import format_table
    ctx = Context(repeats=args.repeats, warmup=args.warmup, preset=args.preset,
                  batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype,
                  tiny=args.tiny, options={"torch_threads": args.torch_threads})
    ctx.options["train_gpt2"] = args.train_gpt2
    ctx.options["peers"] = args.peers
    ctx.options["compile_peers"] = args.compile_peers
    ctx.options["compile_mode"] = args.compile_mode
    ctx.options["flax_python"] = args.flax_python
    ctx.config()  # validates --preset and --dtype with a one-line error
    name, cfg = ctx.model()
    if args.seq_len is not None and args.seq_len > cfg.block_size:
        raise UserError(f"--seq_len {args.seq_len} exceeds {name}'s block_size "
                        f"{cfg.block_size}: pass at most {cfg.block_size} (or omit it)")
    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only \
        else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise UserError(f"unknown bench section(s) {unknown or args.only!r}; choose from "
                        f"{', '.join(SECTIONS)}")
    if "forward" in names:
        check_forward_memory(ctx)
    results = run_sections(ctx, names)
    print(format_table(results))
    if old is not None:
        from gpt_jax.lab.bench.compare import compare, format_changes
        print(format_changes(*compare(results, old), args.compare))
    write_outputs(args, results)


def write_outputs(args, results, extra=(), write_json=None) -> None:
    """--json and --plot (and a suite's outputs in `extra`: (path, write(path, results)))."""
    from gpt_jax.lab.bench.report import write_plot
    from gpt_jax.errors import UserError
    if write_json is None:
        from gpt_jax.lab.bench.report import write_json
    for path, write in ((args.json, write_json), (args.plot, write_plot), *extra):
        if path:
            try:
                write(path, results)
            except OSError as e:
                raise UserError(f"could not write {path} ({e.strerror or e}); the table above "
                                f"holds the results") from None
            print(f"[bench] wrote {path}", file=sys.stderr)


def check_accelerator(suite: str) -> None:
    """--suite gpu on the default backend: refused in one line where that is the CPU (it ran
    the 124M recipe there for minutes, asked for 43 GB and passed a child's traceback up)."""
    import jax
    from gpt_jax.errors import UserError
    if jax.default_backend() == "cpu":
        raise UserError(f"--suite {suite} needs a GPU, and jax finds none here (its backend is "
                        f"cpu): on this machine, check the suite's plumbing with "
                        f"python bench.py --suite {suite} --device cpu --tiny")


def main_suite(args) -> None:
    """--suite NAME: its pytest run, then its steps, each in a process of its own with a time
    budget (gpt_jax/lab/bench/suite.py); the table on stdout, and the --json / --plot / --table
    files. This process only checks --device: the children measure."""
    import time
    from gpt_jax.lab.bench.harness import Context, machine_info
    from gpt_jax.lab.bench.report import check_table_file, format_table, write_json, write_table
    from gpt_jax.lab.bench.suite import (SUITES, checkout_root, markdown_table, run_steps,
                                         run_tests)
    suite = SUITES[args.suite]
    if args.table:
        check_table_file(args.table, args.suite)
    env = dict(os.environ)   # the children's: theirs to preallocate the GPU's memory
    # This process holds no arrays: it must not take the memory the children measure with.
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if args.device:
        use_device(args.device)
    elif not args.tiny:
        check_accelerator(args.suite)
    platform = DEVICES.get(args.device)
    t0 = time.perf_counter()
    results = run_tests(args.suite, checkout_root(), platform, env) if args.tests else []
    ctx = Context(repeats=args.repeats, warmup=args.warmup, preset=suite.preset,
                  dtype=suite.dtype, tiny=args.tiny,
                  options={"peers": "accelerator" if args.peers else False,
                           "compile_peers": args.compile_peers,
                           "compile_mode": args.compile_mode,
                           "torch_threads": args.torch_threads})
    steps, machine = run_steps(args.suite, ctx, platform, env)
    results += steps
    machine = machine or machine_info()   # every step failed: this process's view
    print(format_table(results))
    command = "python bench.py " + " ".join(sys.argv[1:])
    table = markdown_table(args.suite, results, machine, command, args.tiny)
    print(table)
    print(f"[bench] suite {args.suite}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    write_outputs(args, results,
                  [(args.table, lambda path, _: write_table(path, args.suite, table))],
                  write_json=lambda path, rows: write_json(path, rows, machine))


def entry() -> None:
    """The console script (gpt-jax-bench) and `python -m gpt_jax.cli.bench`."""
    from gpt_jax.cli.common import run
    run(main)


if __name__ == "__main__":
    entry()
