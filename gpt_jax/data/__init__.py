"""Token data: the prepared directory format, preparing a corpus (the built-in one, text files,
a Hugging Face dataset), resolving --data, and the training batches.

    format.py     meta.json + <split>.bin: reading and checking a prepared directory
    prepare.py    documents -> a prepared directory (staged, swapped in whole)
    textfiles.py  the user's text files as documents     builtin.py  the built-in corpus
    sources.py    --data -> a prepared directory          tokens.py   TokenData, BatchSampler
    textstats.py  do samples look like their corpus
"""
from gpt_jax.data.format import META, SPLITS, DamagedData, check_dir, read_meta
from gpt_jax.data.prepare import builtin_dir, prepare_builtin, prepare_files
from gpt_jax.data.sources import resolve
from gpt_jax.data.tokens import BatchSampler, TokenData

__all__ = ["META", "SPLITS", "BatchSampler", "DamagedData", "TokenData", "builtin_dir",
           "check_dir", "prepare_builtin", "prepare_files", "read_meta", "resolve"]
