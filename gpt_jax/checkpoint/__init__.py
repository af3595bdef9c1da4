"""Weights on disk: orbax checkpoints, their integrity, the run lock, Hugging Face import/export."""
