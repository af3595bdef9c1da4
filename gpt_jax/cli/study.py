"""`python study.py` / gpt-jax-study: the chapter's claims measured (gpt_jax/lab/study/), written
to docs/study/report.md and its figures."""
from __future__ import annotations

import signal

from gpt_jax.cli.common import ArgumentParser, run
from gpt_jax.lab.study import FULL, TINY, run_study


def main(argv=None) -> int:
    p = ArgumentParser(prog="study.py", description=__doc__)
    p.add_argument("--out_dir", default=None,
                   help="where report.md and the PNGs go (default docs/study, "
                        "--tiny: out-study-tiny)")
    p.add_argument("--tiny", action="store_true", help="every experiment at a tiny size")
    p.add_argument("--model", default=None,
                   help="a train.py out_dir whose model the generation strategies use "
                        "(default: the model the study trains)")
    p.add_argument("--only", default=None,
                   help="comma-separated subset of norm,heads,mask,strategies,kv")
    a = p.parse_args(argv)
    only = a.only.split(",") if a.only else None
    bad = set(only or ()) - {"norm", "heads", "mask", "strategies", "kv"}
    if bad:
        p.error(f"--only takes norm, heads, mask, strategies, kv; got {', '.join(sorted(bad))}")
    s = TINY if a.tiny else FULL

    def stop(signum, frame):   # `timeout` sends SIGTERM: end like Ctrl-C, saving what ran
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    run_study(s, a.out_dir or ("out-study-tiny" if a.tiny else "docs/study"),
              model_dir=a.model, only=only)
    return 0


def entry() -> None:
    """The console script (gpt-jax-study) and `python -m gpt_jax.cli.study`."""
    run(main)


if __name__ == "__main__":
    entry()
