"""Helpers with no model knowledge: timing and paths."""
