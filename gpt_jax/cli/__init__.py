"""The command-line entry points (train, sample, eval, prepare, bench, study, analysis, hf)."""
