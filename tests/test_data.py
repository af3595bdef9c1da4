"""Token files, the built-in corpus, the batch sampler and the bad-data errors."""
import json
import os

import numpy as np
import pytest

from gpt_jax import data
from gpt_jax.errors import DataError, UserError
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


def snapshot(d):
    """{name: bytes} of every file under d (hidden and nested ones too)."""
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = f.read()
    return out


def good_dir(path):
    data.prepare(["some text " * 50] * 3, 3, str(path), sources=["x"], progress=False)
    data.TokenData(str(path), block_size=4, vocab_size=50257)
    return snapshot(path)


def test_interrupted_prepare_keeps_the_old_data(tmp_path):
    before = good_dir(tmp_path)

    def docs():
        yield "first"
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        data.prepare(docs(), 2, str(tmp_path), sources=["x"], batch_docs=1, progress=False)
    assert snapshot(tmp_path) == before       # old data intact, nothing partial left behind
    data.TokenData(str(tmp_path), block_size=4, vocab_size=50257)
    # with no old data: nothing is left that looks complete (here: nothing at all)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(docs(), 2, str(tmp_path / "new"), sources=["x"], batch_docs=1,
                     progress=False)
    assert not os.path.exists(tmp_path / "new")


@pytest.mark.parametrize("flags", [["--num_threads", "-1"], ["--batch_docs", "0"],
                                   ["--num_threads", "0"], ["--empty"]])
def test_bad_prepare_input_destroys_nothing(tmp_path, flags):
    import prepare as prepare_cli
    out = tmp_path / "tok"
    before = good_dir(out)
    empty = write(str(tmp_path / "empty.txt"), "")
    good = write(str(tmp_path / "good.txt"), "plenty of words " * 100)
    argv = ["--input", empty if flags == ["--empty"] else good, "--out_dir", str(out)]
    with pytest.raises(UserError):
        prepare_cli.main(argv + (flags if flags != ["--empty"] else []))
    assert snapshot(out) == before


def test_signal_during_the_swap_is_deferred(tmp_path, monkeypatch):
    """A Ctrl-C that lands while the new files are renamed into place takes effect after the
    swap: the directory holds the complete new data, never a mix."""
    import signal
    good_dir(tmp_path)
    real = os.replace
    sent = []

    def replace(a, b):
        if not sent:
            sent.append(1)
            signal.raise_signal(signal.SIGINT)
        real(a, b)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        data.prepare(["other words " * 40], 1, str(tmp_path), sources=["y"], progress=False)
    monkeypatch.setattr(os, "replace", real)
    td = data.TokenData(str(tmp_path), block_size=4, vocab_size=50257)
    assert td.meta["sources"] == ["y"]
    text = get_tokenizer().decode(np.concatenate([td.splits["train"], td.splits["val"]]).tolist())
    assert text == "other words " * 40 + "<|endoftext|>"


def test_failed_swap_does_not_look_complete(tmp_path, monkeypatch):
    good_dir(tmp_path)
    real, calls = os.replace, []

    def replace(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(a, b)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(DataError, match="prepare"):
        data.prepare(["other words " * 40], 1, str(tmp_path), sources=["y"], progress=False)
    monkeypatch.setattr(os, "replace", real)
    with pytest.raises(DataError, match="meta.json"):   # a mix of old and new is never read
        data.TokenData(str(tmp_path), block_size=4, vocab_size=50257)


def test_bad_out_dir_is_one_line_and_destroys_nothing(tmp_path, monkeypatch):
    f = write(str(tmp_path / "afile"), "precious")
    for out in (f, os.path.join(f, "sub")):
        with pytest.raises(DataError, match="afile"):
            data.prepare(["text " * 20], 1, out, sources=["x"], progress=False)
    assert open(f).read() == "precious"
    # an existing directory we may not write to (simulated: the tests may run as root)
    before = good_dir(tmp_path / "ro")
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))
    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(DataError, match="cannot write"):
        data.prepare(["text " * 20], 1, str(tmp_path / "ro"), sources=["x"], progress=False)
    assert snapshot(tmp_path / "ro") == before


def test_stale_staging_dirs_are_removed(tmp_path):
    """A prepare killed outright (SIGKILL) leaves its hidden staging directory; the next
    prepare into the same directory removes it (its process is gone)."""
    import socket
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True)
    dead = int(p.stdout)
    stale = tmp_path / f".prepare-{socket.gethostname()}-{dead}-abc"
    stale.mkdir()
    (stale / "train.bin").write_bytes(b"\0" * 100)
    live = tmp_path / f".prepare-{socket.gethostname()}-{os.getpid()}-abc"
    live.mkdir()
    good_dir(tmp_path)
    assert not stale.exists() and live.exists()


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


# -- damaged prepared directories ---------------------------------------------------------

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
    monkeypatch.setattr(data, "BUILTIN_MAX_BYTES", 100_000)
    monkeypatch.setenv("GPT_JAX_DATA", str(tmp_path / "b"))
    d = data.resolve("builtin", progress=False)
    damaged(d, "meta.json", "[]")
    assert data.resolve("builtin", progress=False) == d
    assert "damaged" in capsys.readouterr().out
    data.TokenData(d, block_size=8, vocab_size=50257)


# -- odd --data / --input paths ------------------------------------------------------------

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


def test_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
    f = write(str(tmp_path / "t.txt"), "words " * 100)
    real_open = open

    def deny(path, *a, **k):
        if str(path) == f:
            raise PermissionError(13, "Permission denied", f)
        return real_open(path, *a, **k)
    import builtins
    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(DataError, match="cannot read.*t.txt"):
        data.prepare_files([f], str(tmp_path / "out"), progress=False)


def test_own_meta_json_is_not_tokenised(tmp_path):
    """--input DIR --out_dir DIR twice: the second run must not read the first's meta.json."""
    write(str(tmp_path / "a.txt"), "alpha beta " * 50)
    m1 = data.prepare_files([str(tmp_path)], str(tmp_path), progress=False)
    m2 = data.prepare_files([str(tmp_path)], str(tmp_path), progress=False)
    assert m2["sources"] == m1["sources"] == [str(tmp_path / "a.txt")]


# -- binary and non-UTF-8 input -------------------------------------------------------------

def test_binary_file_named_explicitly_is_refused(tmp_path):
    rnd = tmp_path / "random.txt"
    rnd.write_bytes(np.random.default_rng(0).bytes(3000))
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("hello world, in UTF-16\n".encode("utf-16") * 20)
    for f in (rnd, utf16):
        with pytest.raises(DataError, match=f"{f.name} is not UTF-8 text"):
            data.prepare_files([str(f)], str(tmp_path / "out"), progress=False)
    assert not os.path.exists(tmp_path / "out")
    short = tmp_path / "short.txt"                 # too short to hold a NUL by chance
    short.write_bytes(bytes(range(128, 228)))
    with pytest.raises(DataError, match="short.txt is not UTF-8"):
        data.prepare_files([str(short)], str(tmp_path / "out"), progress=False)


def test_binary_file_in_a_directory_is_skipped(tmp_path, capsys):
    write(str(tmp_path / "src" / "a.txt"), "good text " * 40)
    (tmp_path / "src" / "b.txt").write_bytes(b"\x00\x01\x02" * 500)
    meta = data.prepare_files([str(tmp_path / "src")], str(tmp_path / "out"), progress=False)
    assert meta["sources"] == [str(tmp_path / "src" / "a.txt")] and meta["documents"] == 1
    assert meta["skipped"] == [{"path": str(tmp_path / "src" / "b.txt"),
                                "reason": "holds NUL bytes"}]
    err = capsys.readouterr().err
    assert "warning: skipping" in err and "b.txt" in err
    (tmp_path / "src" / "a.txt").write_bytes(b"\xff" * 100)   # nothing text is left
    with pytest.raises(DataError, match="no text files"):
        data.prepare_files([str(tmp_path / "src")], str(tmp_path / "out"), progress=False)


def test_latin1_file_warns_and_counts(tmp_path, capsys):
    text = "Le caf\xe9 de la gar\xe7on, tr\xe8s \xe9l\xe9gant. " * 30
    f = tmp_path / "latin1.txt"
    f.write_bytes(text.encode("latin-1"))
    meta = data.prepare_files([str(f)], str(tmp_path / "out"), progress=False)
    err = capsys.readouterr().err
    assert "warning:" in err and "latin1.txt" in err and "150 " in err and "iconv" in err
    assert meta["documents"] == 1
    # a U+FFFD that is really in the (UTF-8) text is not counted as a decoding error
    g = write(str(tmp_path / "ok.txt"), "replacement char \ufffd is fine " * 20)
    data.prepare_files([g], str(tmp_path / "out2"), progress=False)
    assert "warning" not in capsys.readouterr().err


def test_disk_full_while_writing_keeps_the_old_data(tmp_path, monkeypatch):
    before = good_dir(tmp_path)

    def full(path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(data, "_fsync", full)
    with pytest.raises(DataError, match="No space left on device.*nothing there was changed"):
        data.prepare(["new text " * 40], 1, str(tmp_path), sources=["y"], progress=False)
    assert snapshot(tmp_path) == before


def test_unreadable_subdirectory_is_an_error(tmp_path, monkeypatch):
    write(str(tmp_path / "src" / "a.txt"), "text " * 50)
    write(str(tmp_path / "src" / "locked" / "b.txt"), "more text " * 50)
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match="cannot read the directory .*locked"):
        data.text_sources([str(tmp_path / "src")])


def test_empty_out_dir_name(tmp_path):
    with pytest.raises(DataError, match="--out_dir is empty"):
        data.prepare(["text " * 20], 1, "", sources=["x"], progress=False)
