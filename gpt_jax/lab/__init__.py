"""The lab: the analysis, the study and the benchmarks."""
