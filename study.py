"""The chapter's claims, measured: `python study.py` (about 15 minutes on 2 CPU cores) writes
docs/study/report.md and its figures. See gpt_jax/lab/study/ and docs/chapter.md."""
from gpt_jax.cli.common import run
from gpt_jax.lab.study import main

if __name__ == "__main__":
    run(main)
