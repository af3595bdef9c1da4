"""`python -m gpt_jax.cli.analysis`: measure gpt_jax against Hugging Face GPT-2 and nanoGPT
(gpt_jax/lab/analysis.py; docs/analysis.md)."""
from __future__ import annotations

import json
import os
import sys
import time

from gpt_jax.cli.common import ArgumentParser, exit_on_signals, run, str2bool
from gpt_jax.errors import UserError
from gpt_jax.lab.analysis import SECTIONS, machine


def main(argv=None) -> int:
    p = ArgumentParser(prog="python -m gpt_jax.cli.analysis",
                       description="Measure gpt_jax against Hugging Face GPT-2 and nanoGPT "
                                   "(docs/analysis.md).")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections: {', '.join(SECTIONS)}")
    p.add_argument("--json", default=None, help="write every figure to this file")
    p.add_argument("--hf", type=str2bool, default=True,
                   help="measure the Hugging Face (PyTorch) peers too (needs torch, "
                        "transformers)")
    a = p.parse_args(argv)
    names = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise UserError(f"--only: unknown section(s) {', '.join(unknown) or '(none)'}; "
                        f"choose from {', '.join(SECTIONS)}")
    if a.hf:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            raise UserError("--hf true needs torch and transformers (pip install "
                            "'gpt-jax[test]'), or pass --hf false") from None
    if a.json:
        try:
            open(a.json, "a").close()
        except OSError as e:
            raise UserError(f"--json {a.json}: cannot write ({e.strerror}): pass another "
                            f"path") from None
    if argv is None:   # the command line: Ctrl-C / SIGTERM end it at once, in one line
        exit_on_signals("analysis", lambda: f"{a.json} holds the sections that ended, "
                                            f"marked \"complete\": false" if a.json else None)
    report = {"machine": machine(), "complete": False, "sections": {}}
    for i, name in enumerate(names):
        t0 = time.perf_counter()
        report["sections"][name] = SECTIONS[name](a.hf)
        print(f"== {name} ({time.perf_counter() - t0:.0f} s)")
        print(json.dumps(report["sections"][name], indent=1, default=float))
        sys.stdout.flush()
        report["complete"] = i == len(names) - 1
        # the load beside the start's: a speed row is only quoted from a quiet run
        report["machine"]["load_average_after_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
        if a.json:   # after each section: a long run leaves what it has measured, and only
            write_json(a.json, report)   # the last write says "complete": true
    return 0


def write_json(path: str, report: dict) -> None:
    """The report as a whole file or not at all (a temporary file renamed over it): an exit
    at any moment leaves the previous section's file, never half of one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, default=float)
    os.replace(tmp, path)


def entry() -> None:
    """The console script and `python -m gpt_jax.cli.analysis`."""
    run(main)


if __name__ == "__main__":
    entry()
