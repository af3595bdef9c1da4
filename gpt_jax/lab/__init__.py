"""The lab: measurements behind the docs, run by the CLIs.

    analysis.py, analysis_speed.py  docs/analysis.md: gpt_jax against HF GPT-2 and nanoGPT
    study/                          docs/chapter.md: the chapter's claims measured (study.py)
    bench/                          bench.py: speed against peers, one module per section
"""
__all__: list = []
