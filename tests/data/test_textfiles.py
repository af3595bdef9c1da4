"""gpt_jax.data.textfiles: which files are text and how they are read (binary and UTF-16 files
refused or skipped, Latin-1 bytes replaced with a warning, unreadable files and directories as
one-line errors, a prepared directory's own files never tokenised)."""
import os

import numpy as np
import pytest

import gpt_jax.data.prepare as corpus

import gpt_jax.data.textfiles as textfiles
from gpt_jax.errors import DataError

from token_dirs import write


def test_empty_corpus(tmp_path):
    write(str(tmp_path / "e1.txt"), "")
    write(str(tmp_path / "e2.txt"), "")
    with pytest.raises(DataError, match="no text"):
        corpus.prepare_files([str(tmp_path)], str(tmp_path / "out"), progress=False)
    os.makedirs(tmp_path / "empty_dir")
    with pytest.raises(DataError, match="no text files"):
        textfiles.text_sources([str(tmp_path / "empty_dir")])


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
        corpus.prepare_files([f], str(tmp_path / "out"), progress=False)


def test_own_meta_json_is_not_tokenised(tmp_path):
    """--input DIR --out_dir DIR twice: the second run must not read the first's meta.json."""
    write(str(tmp_path / "a.txt"), "alpha beta " * 50)
    m1 = corpus.prepare_files([str(tmp_path)], str(tmp_path), progress=False)
    m2 = corpus.prepare_files([str(tmp_path)], str(tmp_path), progress=False)
    assert m2["sources"] == m1["sources"] == [str(tmp_path / "a.txt")]


def test_binary_file_named_explicitly_is_refused(tmp_path):
    rnd = tmp_path / "random.txt"
    rnd.write_bytes(np.random.default_rng(0).bytes(3000))
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes("hello world, in UTF-16\n".encode("utf-16") * 20)
    for f in (rnd, utf16):
        with pytest.raises(DataError, match=f"{f.name} is not UTF-8 text"):
            corpus.prepare_files([str(f)], str(tmp_path / "out"), progress=False)
    assert not os.path.exists(tmp_path / "out")
    short = tmp_path / "short.txt"                 # too short to hold a NUL by chance
    short.write_bytes(bytes(range(128, 228)))
    with pytest.raises(DataError, match="short.txt is not UTF-8"):
        corpus.prepare_files([str(short)], str(tmp_path / "out"), progress=False)


def test_binary_file_in_a_directory_is_skipped(tmp_path, capsys):
    write(str(tmp_path / "src" / "a.txt"), "good text " * 40)
    (tmp_path / "src" / "b.txt").write_bytes(b"\x00\x01\x02" * 500)
    meta = corpus.prepare_files([str(tmp_path / "src")], str(tmp_path / "out"), progress=False)
    assert meta["sources"] == [str(tmp_path / "src" / "a.txt")] and meta["documents"] == 1
    assert meta["skipped"] == [{"path": str(tmp_path / "src" / "b.txt"),
                                "reason": "holds NUL bytes"}]
    err = capsys.readouterr().err
    assert "warning: skipping" in err and "b.txt" in err
    (tmp_path / "src" / "a.txt").write_bytes(b"\xff" * 100)   # nothing text is left
    with pytest.raises(DataError, match="no text files"):
        corpus.prepare_files([str(tmp_path / "src")], str(tmp_path / "out"), progress=False)


def test_latin1_file_warns_and_counts(tmp_path, capsys):
    text = "Le caf\xe9 de la gar\xe7on, tr\xe8s \xe9l\xe9gant. " * 30
    f = tmp_path / "latin1.txt"
    f.write_bytes(text.encode("latin-1"))
    meta = corpus.prepare_files([str(f)], str(tmp_path / "out"), progress=False)
    err = capsys.readouterr().err
    assert "warning:" in err and "latin1.txt" in err and "150 " in err and "iconv" in err
    assert meta["documents"] == 1
    # a U+FFFD that is really in the (UTF-8) text is not counted as a decoding error
    g = write(str(tmp_path / "ok.txt"), "replacement char \ufffd is fine " * 20)
    corpus.prepare_files([g], str(tmp_path / "out2"), progress=False)
    assert "warning" not in capsys.readouterr().err


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
        textfiles.text_sources([str(tmp_path / "src")])
