"""The commands: each module parses flags and calls the library.

    train.py    gpt-jax-train     python train.py      sample.py   gpt-jax-sample   python sample.py
    eval.py     gpt-jax-eval      python eval.py       prepare.py  gpt-jax-prepare  python prepare.py
    bench.py    gpt-jax-bench     python bench.py      study.py    gpt-jax-study    python study.py
    analysis.py python -m gpt_jax.cli.analysis         hf.py       python -m gpt_jax.hf export
    common.py   the shared parser (one-line errors), flag types, run(), signals
"""
__all__: list = []
