import hashlib
import shutil

import tiktoken

from gpt_jax import get_tokenizer
from gpt_jax.model.tokenizer import bpe_files

TEXT = ("Hello, world! It's GPT-2's BPE.\n\n   indented\tand\ttabs   \n"
        "Ünïcödé: naïve café, 日本語のテキスト, Ελληνικά, русский; emoji 🤖🚀👍🏽 and ZWJ 👩‍💻\n"
        "numbers 1234567 3.14159, symbols <>{}[]()!?@#$%^&*_+=~`|\\/ \r\n"
        "   trailing spaces   \n\n\n<|endoftext|>next document    ")

URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


def reference_encoding(tmp_path, monkeypatch):
    """tiktoken's own "gpt2" constructor, served the same files through its cache directory
    (named by sha1 of the download URL, as tiktoken looks them up), so nothing downloads."""
    vocab_bpe, encoder_json = bpe_files()
    for path, name in ((vocab_bpe, "vocab.bpe"), (encoder_json, "encoder.json")):
        shutil.copy(path, tmp_path / hashlib.sha1((URL + name).encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    from tiktoken_ext.openai_public import gpt2
    return tiktoken.Encoding(**gpt2())


def test_equal_to_tiktoken_gpt2(tmp_path, monkeypatch):
    ours, ref = get_tokenizer(), reference_encoding(tmp_path, monkeypatch)
    assert ours.n_vocab == ref.n_vocab == 50257
    assert ours.eot_token == ref.eot_token == 50256
    assert ours._mergeable_ranks == ref._mergeable_ranks
    assert ours._pat_str == ref._pat_str and ours._special_tokens == ref._special_tokens
    ids = ours.encode(TEXT, allowed_special={"<|endoftext|>"})
    assert ids == ref.encode(TEXT, allowed_special={"<|endoftext|>"})
    assert 50256 in ids and len(ids) > 50
    assert ours.encode_ordinary(TEXT) == ref.encode_ordinary(TEXT)


def test_round_trip_and_known_ids():
    enc = get_tokenizer()
    assert enc.decode(enc.encode(TEXT, allowed_special="all")) == TEXT
    assert enc.encode("Hello world") == [15496, 995]  # ids from GPT-2's published vocabulary
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_special_token_not_allowed_by_default():
    import pytest
    with pytest.raises(ValueError):
        get_tokenizer().encode("<|endoftext|>")
