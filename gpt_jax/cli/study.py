"""`python study.py` / gpt-jax-study: the chapter's claims measured (gpt_jax/lab/study/), written
to docs/study/report.md and its figures."""
from __future__ import annotations

from gpt_jax.checkpoint.load import load_model
from gpt_jax.cli.common import ArgumentParser, exit_on_signals, run
from gpt_jax.errors import UserError
from gpt_jax.lab.study import TOPICS, Progress, run_study
from gpt_jax.utils.paths import writable_dir


SECTIONS = tuple(TOPICS)   # mlm, probe, norm, tying, strategies, kv


def main(argv=None) -> int:
    p = ArgumentParser(prog="study.py", description=__doc__)
    p.add_argument("--out_dir", default=None,
                   help="where report.md and the PNGs go (default docs/study, "
                        "--tiny: out-study-tiny)")
    p.add_argument("--tiny", action="store_true", help="every experiment at a tiny size")
    p.add_argument("--model", default=None,
                   help="the model the generation strategies use: a train.py out_dir (its "
                        "latest checkpoint, or --step), a Hugging Face directory or a gpt2* "
                        "name (default: the default train.py model, trained once into "
                        "out/study-model and reused)")
    p.add_argument("--step", type=int, default=None,
                   help="with --model OUT_DIR: its checkpoint step (default: the latest)")
    p.add_argument("--only", default=None,
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    a = p.parse_args(argv)
    only = None
    if a.only is not None:
        only = [x.strip() for x in a.only.split(",") if x.strip()]
        bad = sorted(set(only) - set(SECTIONS))
        if bad or not only:
            p.error(f"--only takes a comma-separated subset of {', '.join(SECTIONS)}; got "
                    f"{', '.join(bad) if bad else 'no section'}")
    if a.step is not None and a.model is None:
        p.error("--step picks a checkpoint of --model OUT_DIR: pass --model too")
    if a.step is not None and a.step < 0:
        p.error(f"--step must be a checkpoint step (0 or more), got {a.step}")
    if a.model is not None and only is not None and "strategies" not in only:
        p.error(f"--model is the model of the strategies section, which --only {a.only} "
                f"leaves out: add strategies to --only, or drop --model")
    model = None
    if a.model is not None and (only is None or "strategies" in only):
        try:   # before anything trains: a bad --model fails at once
            model = load_model(a.model, a.step, step_hint="pass --step {step}",
                               step_flag="--step ")
        except UserError as e:
            raise UserError(f"--model {a.model}: {e}") from None
    out_dir = writable_dir(a.out_dir or ("out-study-tiny" if a.tiny else "docs/study"),
                           "--out_dir")   # before anything trains: a file there, read-only
    progress = Progress()
    if argv is None:   # the command line: Ctrl-C / SIGTERM save what ended, then exit at once
        exit_on_signals("study.py", progress.save)
    name = a.model if a.step is None else f"{a.model} at step {a.step}"
    run_study(a.tiny, out_dir, model_dir=name, model=model, only=only, progress=progress)
    return 0


def entry() -> None:
    """The console script (gpt-jax-study) and `python -m gpt_jax.cli.study`."""
    run(main)


if __name__ == "__main__":
    entry()
