"""gpt_jax.data.prepare: documents -> token files (the split, the built-in corpus), and nothing lost:
interrupted, failed or refused prepares leave the old directory as it was."""
import os
import textwrap

import numpy as np
import pytest

import gpt_jax.data.builtin as builtin_corpus

import gpt_jax.data.prepare as corpus

import gpt_jax.data as data
from gpt_jax.errors import DataError, UserError
from gpt_jax.model.tokenizer import get_tokenizer

from token_dirs import good_dir, snapshot, write


def test_prepare_files_roundtrip(tmp_path):
    a = write(str(tmp_path / "src" / "a.txt"), "hello world\n" * 50)
    write(str(tmp_path / "src" / "sub" / "b.md"), "second document " * 30)
    write(str(tmp_path / "src" / "skip.bin"), "not text-like")
    meta = corpus.prepare_files([str(tmp_path / "src")], str(tmp_path / "out"), progress=False)
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
    meta = corpus.prepare(docs, len(docs), str(tmp_path), sources=["x"] * 30, progress=False)
    assert meta["split"]["method"] == "documents"
    val = get_tokenizer().decode(np.fromfile(tmp_path / "val.bin", np.uint16).tolist())
    assert val == "".join(docs[i] + "<|endoftext|>" for i in (5, 15, 25))


def test_interrupted_prepare_keeps_the_old_data(tmp_path):
    before = good_dir(tmp_path)

    def docs():
        yield "first"
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        corpus.prepare(docs(), 2, str(tmp_path), sources=["x"], batch_docs=1, progress=False)
    assert snapshot(tmp_path) == before       # old data intact, nothing partial left behind
    data.TokenData(str(tmp_path), block_size=4, vocab_size=50257)
    # with no old data: nothing is left that looks complete (here: nothing at all)
    with pytest.raises(KeyboardInterrupt):
        corpus.prepare(docs(), 2, str(tmp_path / "new"), sources=["x"], batch_docs=1,
                     progress=False)
    assert not os.path.exists(tmp_path / "new")


@pytest.mark.parametrize("flags", [["--num_threads", "-1"], ["--batch_docs", "0"],
                                   ["--num_threads", "0"], ["--empty"]])
def test_bad_prepare_input_destroys_nothing(tmp_path, flags):
    import gpt_jax.cli.prepare as prepare_cli
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
    # Python's own Ctrl-C handler, whatever this process inherited: a run started in the
    # background of a non-interactive shell (as CI may be) inherits SIGINT ignored, and the
    # deferred signal, acting as it would have, would then do nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            corpus.prepare(["other words " * 40], 1, str(tmp_path), sources=["y"],
                           progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
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
        corpus.prepare(["other words " * 40], 1, str(tmp_path), sources=["y"], progress=False)
    monkeypatch.setattr(os, "replace", real)
    with pytest.raises(DataError, match="meta.json"):   # a mix of old and new is never read
        data.TokenData(str(tmp_path), block_size=4, vocab_size=50257)


def test_bad_out_dir_is_one_line_and_destroys_nothing(tmp_path, monkeypatch):
    f = write(str(tmp_path / "afile"), "precious")
    for out in (f, os.path.join(f, "sub")):
        with pytest.raises(DataError, match="afile"):
            corpus.prepare(["text " * 20], 1, out, sources=["x"], progress=False)
    assert open(f).read() == "precious"
    # an existing directory we may not write to (simulated: the tests may run as root)
    before = good_dir(tmp_path / "ro")
    import tempfile

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))
    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(DataError, match="cannot write"):
        corpus.prepare(["text " * 20], 1, str(tmp_path / "ro"), sources=["x"], progress=False)
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
    assert meta["corpus"] == builtin_corpus.NAME and meta["python"]
    assert meta["method"] == builtin_corpus.METHOD
    srcs = meta["sources"]
    assert not any(part in ("site-packages", "test", "tests") for p in srcs
                   for part in p.split(os.sep))
    assert any(p.startswith("pydoc_data/topics.py:") for p in srcs)
    assert meta["train_tokens"] > 400_000 and meta["val_tokens"] > 40_000
    assert corpus.builtin_sources() == corpus.builtin_sources()   # deterministic selection
    # prose, not source: a small model learns words, not indentation (issue 16)
    ids = np.fromfile(os.path.join(builtin_data, "train.bin"), np.uint16)
    text = get_tokenizer().decode(ids[:200_000].tolist())
    assert "Return the" in text
    assert sum(c.isspace() for c in text) / len(text) < 0.2    # Python source: about 0.32
    # no whitespace-only token can follow itself: no "\n" after "\n", and " " (a space GPT-2's
    # BPE could not attach to a word) at most once in 10,000 tokens
    newline, space = get_tokenizer().encode("\n") + get_tokenizer().encode(" ")
    assert not np.any((ids[:-1] == newline) & (ids[1:] == newline))
    assert np.count_nonzero(ids == space) < len(ids) / 10_000
    docs, sources = builtin_corpus.documents(corpus.builtin_sources()[:50])
    assert builtin_corpus.meta(docs, sources)["text_sha256"] == builtin_corpus.meta(
        *builtin_corpus.documents(corpus.builtin_sources()[:50]))["text_sha256"]


def test_builtin_corpus_takes_docstrings_in_source_order():
    src = textwrap.dedent('''\
        """Module doc."""
        import os
        class A:
            """Class A.


            Indented
                more   aligned    text.
            """
            def f(self):
                """Method f."""
                x = "not a docstring"
        def g():
            pass
        async def h():
            """Coroutine h."""
        ''').replace("Indented", "Indented  \t")   # and trailing whitespace
    assert builtin_corpus.module_docs(src) == (
        "Module doc.\nClass A.\nIndented\nmore aligned text.\nMethod f.\nCoroutine h.")
    assert builtin_corpus.module_docs("def broken(:\n") == ""
    assert builtin_corpus.normalise("  a  b \n\n\n\tc\n \n") == "a b\nc"


def test_disk_full_while_writing_keeps_the_old_data(tmp_path, monkeypatch):
    before = good_dir(tmp_path)

    def full(path):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(corpus, "sync_file", full)
    with pytest.raises(DataError, match="No space left on device.*nothing there was changed"):
        corpus.prepare(["new text " * 40], 1, str(tmp_path), sources=["y"], progress=False)
    assert snapshot(tmp_path) == before


def test_empty_out_dir_name(tmp_path):
    with pytest.raises(DataError, match="--out_dir is empty"):
        corpus.prepare(["text " * 20], 1, "", sources=["x"], progress=False)
