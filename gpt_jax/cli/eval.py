"""Zero-shot evaluation of a model.

  python eval.py --init_from gpt2 --task hellaswag|lambada|text [--data PATH] [--stride N]
                 [--batch_size N] [--limit N] [--json FILE]
  python eval.py --init_from gpt2 --harness lambada_openai,hellaswag [--include_path DIR]
  python eval.py --init_from out --step 400 --task text    # a chosen checkpoint step

--init_from: a train.py out_dir (default: out), a gpt2* hub name or a Hugging Face directory.
--task scores the standard file (downloaded into ~/.cache/gpt_jax/eval, or $GPT_JAX_CACHE) or
--data PATH; --harness runs EleutherAI's lm-evaluation-harness with the "gpt_jax" model
(pip install 'gpt-jax[eval]'). The results table goes to stdout; progress and timings to stderr.
"""
import argparse


def parse_args(argv=None):
    from gpt_jax.cli.common import ArgumentParser, add_model_flags
    from gpt_jax.evaluation.tasks import TASKS
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--task", choices=TASKS, help="a built-in task")
    p.add_argument("--harness", metavar="TASKS",
                   help="comma-separated lm-evaluation-harness task names")
    p.add_argument("--include_path", metavar="DIR",
                   help="--harness: a directory of extra lm-eval task YAML files")
    p.add_argument("--data", metavar="PATH",
                   help="--task: the data file (default: the standard one, downloaded)")
    p.add_argument("--stride", type=int, default=None,
                   help="--task text: tokens between windows, 1 to block_size "
                        "(default: block_size)")
    p.add_argument("--batch_size", type=int, default=None,
                   help="rows per compiled call (default: sized by sequence length)")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N examples (text: tokens)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if (args.task is None) == (args.harness is None):
        p.error("give exactly one of --task and --harness")
    if args.harness is not None:
        if args.data or args.stride is not None:
            p.error("--data and --stride apply to --task; lm-eval tasks name their own data")
        args.harness = [t.strip() for t in args.harness.split(",") if t.strip()]
        if not args.harness:
            p.error("--harness needs at least one task name")
    elif args.include_path:
        p.error("--include_path applies to --harness")
    if args.stride is not None and args.task != "text":
        p.error("--stride applies to --task text only")
    if args.step is not None and args.step < 0:
        p.error(f"--step must be a checkpoint step (0 or more), got {args.step}")
    for name in ("stride", "batch_size", "limit"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args


def run_tasks(args):
    import gpt_jax.evaluation.tasks as tasks
    result, table = tasks.evaluate(args.init_from, args.task, args.data, limit=args.limit,
                                   batch_size=args.batch_size, stride=args.stride,
                                   step=args.step)
    print(table)
    if args.json:
        keys = ("task", "n", *tasks.METRICS[args.task])
        tasks.write_json(args.json, {k: result[k] for k in keys})


def run_harness(args):
    from gpt_jax.errors import UserError
    from gpt_jax.evaluation.tasks import write_json
    try:
        import gpt_jax.evaluation.harness as evals  # imports lm_eval and registers the "gpt_jax" model
    except ImportError:
        raise UserError("--harness needs lm-evaluation-harness: pip install 'gpt-jax[eval]'") \
            from None
    results = evals.run_harness(args.init_from, args.harness, include_path=args.include_path,
                                batch_size=args.batch_size, limit=args.limit, step=args.step)
    print(evals.results_table(results))
    if args.json:
        write_json(args.json, {"results": results["results"],
                               "n-samples": results.get("n-samples", {})})


def main(argv=None):
    args = parse_args(argv)
    if argv is None:   # the command line: Ctrl-C / SIGTERM stop it at once, with one line
        from gpt_jax.cli.common import exit_on_signals
        exit_on_signals("eval.py")
    if args.harness is not None:
        run_harness(args)
    else:
        run_tasks(args)


def entry() -> None:
    """The console script (gpt-jax-eval) and `python -m gpt_jax.cli.eval`."""
    from gpt_jax.cli.common import run
    run(main)


if __name__ == "__main__":
    entry()
