"""The user's text files as documents: which files count, which are text, and reading them.

A file named explicitly must be UTF-8 text (an error otherwise); one found in a directory that is
not text is skipped with a warning. Text with a few bytes that are not UTF-8 (Latin-1 prose, say)
is read with those bytes replaced, and a warning says how many. Newlines are normalised as
text-mode open() does.
"""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from gpt_jax.data.format import META, SPLITS
from gpt_jax.errors import DataError

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".html", ".c", ".h", ".tex", ".csv")


# A file is not text when it holds a NUL byte (binary, UTF-16, ...) or when more than
# NOT_TEXT_FRACTION of its characters are undecodable UTF-8 or control characters: random
# bytes come to about 55%, Latin-1 prose in a Western language to a few percent (that is
# tokenised, with a warning that names the count of replaced bytes). Decided up front from the
# first SNIFF_BYTES of each file, and again over the whole file when it is read.
NOT_TEXT_FRACTION = 0.3
SNIFF_BYTES = 1 << 16
CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\v\f\r\x1b") + b"\x7f"


# -- which files are text ----------------------------------------------------------------------

def undecodable(raw: bytes, text: str) -> int:
    """How many U+FFFD decoding `raw` as UTF-8 with errors="replace" put into `text` (one per
    invalid sequence; a U+FFFD that is really in the file does not count)."""
    return text.count("\ufffd") - raw.count("\ufffd".encode())


def check_text(raw: bytes, text: str) -> Optional[str]:
    """Why `raw` (decoded as `text`) is not UTF-8 text, or None (see NOT_TEXT_FRACTION)."""
    if b"\0" in raw:
        return "holds NUL bytes"
    bad = undecodable(raw, text) + len(raw) - len(raw.translate(None, CONTROL_BYTES))
    if bad > NOT_TEXT_FRACTION * len(text):
        return f"{bad / len(text):.0%} of its characters are undecodable or control characters"
    return None


def _warn(message: str) -> None:
    from tqdm import tqdm
    tqdm.write(f"warning: {message}", file=sys.stderr)   # on its own line, under a live bar


def _read_bytes(path: str, n: int = -1) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e})") from None


def sniff_text(path: str) -> Optional[str]:
    """check_text on the first SNIFF_BYTES of a file."""
    import codecs
    raw = _read_bytes(path, SNIFF_BYTES)
    # final=False: a multi-byte character cut at the sniff boundary is not an error
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(
        raw, final=len(raw) < SNIFF_BYTES)
    return check_text(raw, text)


# -- which files count --------------------------------------------------------------------------

def _is_prepared_file(path: str) -> bool:
    """A file of a prepared token directory (train.bin, val.bin, meta.json beside them)."""
    d, name = os.path.split(path)
    return (name in (META, *(f"{s}.bin" for s in SPLITS))
            and os.path.isfile(os.path.join(d, "train.bin")))


def _unreadable_dir(e: OSError) -> None:
    # os.walk would skip it silently, and the corpus would quietly lack its files
    raise DataError(f"cannot read the directory {e.filename} ({e.strerror or e}): make it "
                    f"readable or leave it out")


def candidate_files(paths: Sequence[str]) -> list[tuple[str, bool]]:
    """(path, named explicitly) for the files named directly plus the text-like files under
    directories (sorted, recursive; hidden ones and prepared token files left out), each once.
    Reads no file: resolve() stamps its cache with these."""
    out, seen = [], set()

    def add(path, explicit):
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append((path, explicit))
    for p in paths:
        if os.path.isfile(p):
            if _is_prepared_file(p):
                raise DataError(f"{p} is part of a prepared token directory: pass the "
                                f"directory {os.path.dirname(p) or '.'} instead")
            add(p, True)
        elif os.path.isdir(p):
            if (not os.path.isfile(os.path.join(p, META))
                    and any(os.path.isfile(os.path.join(p, f"{s}.bin")) for s in SPLITS)):
                raise DataError(f"{p} holds token files but no {META}: a prepare that did not "
                                f"finish; prepare it again (python prepare.py --input TEXT... "
                                f"--out_dir {p})")
            for d, dirs, names in os.walk(p, onerror=_unreadable_dir):
                dirs[:] = sorted(x for x in dirs if not x.startswith("."))
                for n in sorted(names):
                    path = os.path.join(d, n)
                    if (n.endswith(TEXT_SUFFIXES) and not n.startswith(".")
                            and not _is_prepared_file(path)):
                        add(path, False)
        elif os.path.exists(p):
            raise DataError(f"{p} is not a regular file or a directory: pass text files, "
                            f"directories of text, a prepared dir or `builtin`")
        else:
            raise DataError(f"data path {p} does not exist: pass text files, directories of "
                            f"text, a prepared dir (with {META}) or `builtin`")
    return out


def select_text_files(paths: Sequence[str]) -> tuple[list[str], list[dict]]:
    """(text files, skipped) from candidate_files: a file named directly that is not UTF-8
    text is an error; one found in a directory is skipped with a warning on stderr."""
    files, skipped = [], []
    for path, explicit in candidate_files(paths):
        why = sniff_text(path)
        if why is None:
            files.append(path)
        elif explicit:
            raise DataError(f"{path} is not UTF-8 text ({why}): convert it (e.g. iconv -f "
                            f"latin1 -t utf-8) or leave it out")
        else:
            _warn(f"skipping {path}: not UTF-8 text ({why})")
            skipped.append({"path": path, "reason": why})
    if not files:
        more = f"; skipped {len(skipped)} that are not UTF-8 text" if skipped else ""
        raise DataError(f"no text files found in {', '.join(paths)} (looked for "
                        f"{', '.join(TEXT_SUFFIXES)}{more}): pass files with text in them")
    if all(os.path.getsize(p) == 0 for p in files):
        raise DataError(no_text(files))
    return files, skipped


def no_text(sources: Sequence[str]) -> str:
    more = ", ..." if len(sources) > 3 else ""
    return f"the corpus ({', '.join(sources[:3])}{more}) holds no text: pass non-empty files"


def text_sources(paths: Sequence[str]) -> list[str]:
    """Files named directly, plus text-like files under directories (see select_text_files)."""
    return select_text_files(paths)[0]


# -- reading them -------------------------------------------------------------------------------

def _newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")   # as text-mode open() does


def read_text(path: str) -> str:
    """A file as text, undecodable bytes replaced (the built-in corpus: Python's own source)."""
    return _newlines(_read_bytes(path).decode("utf-8", errors="replace"))


def read_source(path: str, replaced: Optional[dict] = None) -> str:
    """A user's text file: an error if it is not text after all (past its sniffed start); a
    warning, and replaced[path] = count, when some bytes are not UTF-8 (they become U+FFFD)."""
    raw = _read_bytes(path)
    text = raw.decode("utf-8", errors="replace")
    why = check_text(raw, text)
    if why is not None:
        raise DataError(f"{path} is not UTF-8 text ({why}): convert it (e.g. iconv -f latin1 "
                        f"-t utf-8) or leave it out")
    n = undecodable(raw, text)
    if n:
        _warn(f"{path}: {n} byte sequence(s) are not UTF-8 and became U+FFFD (Latin-1? "
              f"convert it first: iconv -f latin1 -t utf-8)")
        if replaced is not None:
            replaced[path] = n
    return _newlines(text)
