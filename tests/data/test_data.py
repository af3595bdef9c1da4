"""gpt_jax.data.tokens: prepared directories checked before use (damaged files and meta.json fields as
one-line errors), resolve() of --data, and the step-indexed batch sampler."""
import json
import os

import numpy as np
import pytest

import gpt_jax.data.builtin as builtin_corpus

import gpt_jax.data.prepare as corpus

import gpt_jax.data as data
from gpt_jax.errors import DataError

from token_dirs import good_dir, write


def test_sampler_is_step_indexed(builtin_data):
    td = data.TokenData(builtin_data, block_size=16, vocab_size=50257)
    s = data.BatchSampler(td, block_size=16, batch_size=3, accum=2, seed=7)
    b = s.train_batch(5)
    assert b.shape == (2, 3, 17) and b.dtype == np.int32
    np.testing.assert_array_equal(b, data.BatchSampler(td, block_size=16, batch_size=3,
                                                       accum=2, seed=7).train_batch(5))
    assert not np.array_equal(b, s.train_batch(6))
    # windows are contiguous slices of the token stream
    row = b[1, 2]
    tr = np.asarray(td.splits["train"])
    starts = np.flatnonzero(tr[:-16] == row[0])
    assert any(np.array_equal(tr[i:i + 17], row) for i in starts)
    # eval draws from its own stream: the training batches do not depend on it
    e = s.eval_batches("val", 5, 4)
    assert e.shape == (4, 3, 17) and not np.array_equal(e[:2], b)
    assert s.state(5) == {"kind": "step-indexed", "seed": 7, "next_step": 5}


def test_missing_path():
    with pytest.raises(DataError, match="does not exist"):
        data.resolve("/no/such/corpus.txt", cache_dir="/tmp/x")


def test_corpus_shorter_than_block(tmp_path):
    write(str(tmp_path / "t.txt"), "just a few words here")
    d = data.resolve(str(tmp_path / "t.txt"), cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(DataError, match="fewer than block_size"):
        data.TokenData(d, block_size=64, vocab_size=50257)


def test_vocab_mismatch(tmp_path):
    corpus.prepare(["some text " * 100], 1, str(tmp_path), sources=["x"], progress=False)
    with pytest.raises(DataError, match="vocab_size is 512"):
        data.TokenData(str(tmp_path), block_size=8, vocab_size=512)
    meta = json.load(open(tmp_path / "meta.json"))
    json.dump({**meta, "tokenizer": "llama"}, open(tmp_path / "meta.json", "w"))
    with pytest.raises(DataError, match="GPT-2 BPE"):
        data.TokenData(str(tmp_path), block_size=8, vocab_size=50257)


def test_resolve_reuses_prepared_text(tmp_path):
    write(str(tmp_path / "t.txt"), "word " * 500)
    d1 = data.resolve(str(tmp_path / "t.txt"), cache_dir=str(tmp_path / "c"), progress=False)
    mtime = os.path.getmtime(os.path.join(d1, "meta.json"))
    d2 = data.resolve(str(tmp_path / "t.txt"), cache_dir=str(tmp_path / "c"), progress=False)
    assert d1 == d2 and os.path.getmtime(os.path.join(d2, "meta.json")) == mtime
    assert data.resolve(d1) == d1   # a prepared directory is used as is


def damaged(path, name, content):
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(os.path.join(path, name), mode) as f:
        f.write(content)


@pytest.mark.parametrize("name,content,match", [
    ("train.bin", b"\1\0" * 200 + b"\7", "odd size"),
    ("meta.json", "[1, 2]", "not a JSON object"),
    ("meta.json", b"\xff\xfe\x00garbage", "unreadable"),
    ("meta.json", '{"tokenizer": "gpt2"}', "vocab_size"),
])
def test_damaged_files_are_one_line_errors(tmp_path, name, content, match):
    good_dir(tmp_path)
    damaged(tmp_path, name, content)
    with pytest.raises(DataError, match=match) as e:
        data.TokenData(str(tmp_path), block_size=4, vocab_size=50257)
    assert "prepare" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("field,value", [("train_tokens", "12"), ("val_tokens", -1),
                                         ("vocab_size", 70000), ("dtype", "uint32"),
                                         ("format_version", 99), ("train_tokens", True)])
def test_meta_fields_are_checked(tmp_path, field, value):
    good_dir(tmp_path)
    meta = json.load(open(tmp_path / "meta.json"))
    damaged(tmp_path, "meta.json", json.dumps({**meta, field: value}))
    with pytest.raises(DataError, match=field):
        data.TokenData(str(tmp_path), block_size=4, vocab_size=70000)


@pytest.mark.parametrize("split", ["train", "val"])
def test_token_ids_out_of_range(tmp_path, split):
    good_dir(tmp_path)
    arr = np.fromfile(tmp_path / f"{split}.bin", np.uint16)
    arr[len(arr) // 2] = 50257        # one id past GPT-2's vocabulary (random bytes: up to 65535)
    arr.tofile(tmp_path / f"{split}.bin")
    with pytest.raises(DataError, match=f"{split}.bin holds token id 50257.*damaged"):
        data.TokenData(str(tmp_path), block_size=4, vocab_size=50304)


def test_resolve_rebuilds_a_damaged_cache(tmp_path, capsys):
    write(str(tmp_path / "t.txt"), "word " * 500)
    cache = str(tmp_path / "c")
    for name, content in [("meta.json", "[1]"), ("meta.json", "{not json"),
                          ("train.bin", b"\1\0\2")]:
        data.resolve(str(tmp_path / "t.txt"), cache_dir=cache, progress=False)
        damaged(cache, name, content)
        assert data.resolve(str(tmp_path / "t.txt"), cache_dir=cache, progress=False) == cache
        assert "damaged" in capsys.readouterr().out
        data.TokenData(cache, block_size=8, vocab_size=50257)


def test_resolve_rebuilds_a_damaged_builtin(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(corpus, "BUILTIN_MAX_BYTES", 100_000)
    monkeypatch.setenv("GPT_JAX_DATA", str(tmp_path / "b"))
    d = data.resolve("builtin", progress=False)
    damaged(d, "meta.json", "[]")
    assert data.resolve("builtin", progress=False) == d
    assert "damaged" in capsys.readouterr().out
    data.TokenData(d, block_size=8, vocab_size=50257)


def test_resolve_replaces_an_older_builtin_corpus(tmp_path, monkeypatch):
    """A data/builtin left by an earlier version (Python source, no stamp) is not reused."""
    monkeypatch.setattr(corpus, "BUILTIN_MAX_BYTES", 100_000)
    monkeypatch.setenv("GPT_JAX_DATA", str(tmp_path / "b"))
    d = data.resolve("builtin", progress=False)
    path = os.path.join(d, "meta.json")
    with open(path) as f:
        meta = json.load(f)
    assert meta["stamp"] == builtin_corpus.stamp()
    old = {k: v for k, v in meta.items() if k not in ("stamp", "method")}
    with open(path, "w") as f:
        json.dump({**old, "corpus": "python-stdlib"}, f)
    assert data.resolve("builtin", progress=False) == d
    assert data.read_meta(d)["stamp"] == builtin_corpus.stamp()


def test_odd_data_paths(tmp_path):
    cache = str(tmp_path / "c")
    with pytest.raises(DataError, match="empty"):
        data.resolve("", cache_dir=cache)
    with pytest.raises(DataError, match="not a regular file"):
        data.resolve("/dev/null", cache_dir=cache)
    d = tmp_path / "tok"
    good_dir(d)
    with pytest.raises(DataError, match="pass the directory"):
        data.resolve(str(d / "train.bin"), cache_dir=cache)
    os.remove(d / "meta.json")     # what a prepare killed mid-swap (or an old version) leaves
    with pytest.raises(DataError, match="no meta.json.*prepare"):
        data.resolve(str(d), cache_dir=cache)
    assert not os.path.exists(cache)
