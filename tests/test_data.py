"""Token files, the built-in corpus, the batch sampler and the bad-data errors."""
import json
import os

import numpy as np
import pytest

from gpt_jax import data
from gpt_jax.errors import DataError
from gpt_jax.tokenizer import EOT_ID, get_tokenizer


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_prepare_files_roundtrip(tmp_path):
    a = write(str(tmp_path / "src" / "a.txt"), "hello world\n" * 50)
    write(str(tmp_path / "src" / "sub" / "b.md"), "second document " * 30)
    write(str(tmp_path / "src" / "skip.bin"), "not text-like")
    meta = data.prepare_files([str(tmp_path / "src")], str(tmp_path / "out"), progress=False)
    assert meta["documents"] == 2 and meta["split"]["method"] == "tokens"
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] == 50257
    tr = np.fromfile(tmp_path / "out" / "train.bin", np.uint16)
    va = np.fromfile(tmp_path / "out" / "val.bin", np.uint16)
    assert (len(tr), len(va)) == (meta["train_tokens"], meta["val_tokens"])
    text = get_tokenizer().decode(np.concatenate([tr, va]).tolist())
    assert text == "hello world\n" * 50 + "<|endoftext|>" + "second document " * 30 + "<|endoftext|>"
    assert meta["sources"] == [a, str(tmp_path / "src" / "sub" / "b.md")]
    assert not [p for p in os.listdir(tmp_path / "out") if p.endswith(".tmp")]


def test_document_split_every_tenth(tmp_path):
    docs = [f"document number {i} " * 5 for i in range(30)]
    meta = data.prepare(docs, len(docs), str(tmp_path), sources=["x"] * 30, progress=False)
    assert meta["split"]["method"] == "documents"
    val = get_tokenizer().decode(np.fromfile(tmp_path / "val.bin", np.uint16).tolist())
    assert val == "".join(docs[i] + "<|endoftext|>" for i in (5, 15, 25))


def test_interrupted_prepare_leaves_no_meta(tmp_path):
    data.prepare(["some text"] * 3, 3, str(tmp_path), sources=["x"], progress=False)
    assert os.path.exists(tmp_path / "meta.json")

    def docs():
        yield "first"
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        data.prepare(docs(), 2, str(tmp_path), sources=["x"], batch_docs=1, progress=False)
    assert not os.path.exists(tmp_path / "meta.json")   # the old bins no longer look complete
    with pytest.raises(DataError, match="meta.json"):
        data.TokenData(str(tmp_path), block_size=4, vocab_size=50257)


def test_builtin_corpus(builtin_data):
    meta = data.read_meta(builtin_data)
    assert meta["corpus"] == "python-stdlib" and meta["python"]
    srcs = meta["sources"]
    assert not any(part in ("site-packages", "test", "tests") for p in srcs
                   for part in p.split(os.sep))
    assert meta["train_tokens"] > 1_000_000 and meta["val_tokens"] > 100_000
    assert data.builtin_sources() == data.builtin_sources()   # deterministic selection


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


def test_empty_corpus(tmp_path):
    write(str(tmp_path / "e1.txt"), "")
    write(str(tmp_path / "e2.txt"), "")
    with pytest.raises(DataError, match="no text"):
        data.prepare_files([str(tmp_path)], str(tmp_path / "out"), progress=False)
    os.makedirs(tmp_path / "empty_dir")
    with pytest.raises(DataError, match="no text files"):
        data.text_sources([str(tmp_path / "empty_dir")])


def test_corpus_shorter_than_block(tmp_path):
    write(str(tmp_path / "t.txt"), "just a few words here")
    d = data.resolve(str(tmp_path / "t.txt"), cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(DataError, match="fewer than block_size"):
        data.TokenData(d, block_size=64, vocab_size=50257)


def test_vocab_mismatch(tmp_path):
    data.prepare(["some text " * 100], 1, str(tmp_path), sources=["x"], progress=False)
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
