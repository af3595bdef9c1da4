"""Token data: text -> `train.bin` / `val.bin` (uint16, flat) + `meta.json`; a batch sampler.

Format (DESIGN.md "Files"): documents are GPT-2 BPE tokens, each followed by `<|endoftext|>`,
concatenated into one flat uint16 array per split. meta.json records the tokenizer, vocab size,
token counts, sources and how the split was made; its presence means both .bin files are
complete.

Nothing is lost: prepare() checks its options, its inputs and out_dir first, tokenises into a
hidden staging directory inside out_dir, and only then swaps the new files in (old meta.json
out first, new one in last, with SIGINT/SIGTERM held off for those few renames). A prepare
that fails or is interrupted before the swap leaves the old directory exactly as it was;
a crash inside the swap leaves no meta.json, so a mix of old and new is never read.

Nothing is misreported: a prepared directory is checked before use (meta.json's fields and
types, each .bin's size against meta.json, and every token id < vocab_size, in one vectorised
pass), and a damaged one is a one-line DataError that says to prepare it again.

The sampler is step-indexed: the windows of step s come from np.random.default_rng([seed, 0, s])
alone, so the sampler's whole state is (seed, step) and a resumed run draws exactly the batches
the uninterrupted run would have. Eval batches use their own stream ([seed, 1 + split, step]),
so evaluating more or less often never changes the training batches.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
from typing import Iterable, Optional, Sequence

import numpy as np

from gpt_jax.errors import ConfigError, DataError
from gpt_jax.tokenizer import EOT_ID, N_VOCAB, get_tokenizer

FORMAT_VERSION = 1
META = "meta.json"
SPLITS = ("train", "val")
VAL_FRACTION = 0.1
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".html", ".c", ".h", ".tex", ".csv")

# A file is not text when it holds a NUL byte (binary, UTF-16, ...) or when more than
# NOT_TEXT_FRACTION of its characters are undecodable UTF-8 or control characters: random
# bytes come to about 55%, Latin-1 prose in a Western language to a few percent (that is
# tokenised, with a warning that names the count of replaced bytes). Decided up front from the
# first SNIFF_BYTES of each file, and again over the whole file when it is read.
NOT_TEXT_FRACTION = 0.3
SNIFF_BYTES = 1 << 16
CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\v\f\r\x1b") + b"\x7f"

# The built-in corpus: the source of Python's standard library, prepared on first use into
# BUILTIN_DIR (relative to the working directory, like out/; override with $GPT_JAX_DATA).
# Skipped: site-packages/ (not the stdlib), test dirs (huge generated data files), caches.
BUILTIN_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__",
                     "idle_test", "lib2to3", "ensurepip", "config-3"}
BUILTIN_MAX_BYTES = 24 << 20   # cap (files in sorted order): keeps prepare to a few seconds


def builtin_dir() -> str:
    return os.environ.get("GPT_JAX_DATA") or os.path.join("data", "builtin")


# -- checks (cheap, and all made before anything is written) -------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_options(*, batch_docs: int = 1, num_threads: Optional[int] = None) -> None:
    """prepare()'s tuning options: positive integers (num_threads None = all cores)."""
    if not _is_int(batch_docs) or batch_docs < 1:
        raise ConfigError(f"--batch_docs must be a positive integer, got {batch_docs!r}")
    if num_threads is not None and (not _is_int(num_threads) or num_threads < 1):
        raise ConfigError(f"--num_threads must be a positive integer (or left out: all "
                          f"cores), got {num_threads!r}")


def check_out_dir(out_dir: str) -> None:
    """out_dir is a directory we may write to, or one we may create."""
    if not out_dir:
        raise DataError("--out_dir is empty: name a directory for the token files")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"{out_dir} exists and is not a directory: pass a directory for the "
                        f"token files")
    probe = out_dir
    while not os.path.exists(probe):       # the nearest ancestor that exists
        probe = os.path.dirname(os.path.abspath(probe))
    if not os.path.isdir(probe):
        raise DataError(f"cannot create {out_dir}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DataError(f"cannot write to {probe}: choose an --out_dir you may write to")


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


# -- collecting documents ------------------------------------------------------------------

def builtin_sources() -> list[str]:
    """The stdlib's .py files in a fixed (sorted) order, capped at BUILTIN_MAX_BYTES."""
    root = sysconfig.get_paths()["stdlib"]
    files, total = [], 0
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in BUILTIN_SKIP_DIRS
                         and not x.startswith("config-"))
        for name in sorted(names):
            if not name.endswith(".py"):
                continue
            path = os.path.join(d, name)
            size = os.path.getsize(path)
            if total + size > BUILTIN_MAX_BYTES:
                return files
            files.append(path)
            total += size
    return files


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
        raise DataError(_no_text(files))
    return files, skipped


def _no_text(sources: Sequence[str]) -> str:
    more = ", ..." if len(sources) > 3 else ""
    return f"the corpus ({', '.join(sources[:3])}{more}) holds no text: pass non-empty files"


def text_sources(paths: Sequence[str]) -> list[str]:
    """Files named directly, plus text-like files under directories (see select_text_files)."""
    return select_text_files(paths)[0]


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


# -- writing token files ---------------------------------------------------------------------

def _is_val(i: int, n_docs: int) -> bool:
    # Every 10th document goes to val (spread over the sorted sources, not the tail, so val
    # looks like train). With < 20 documents, split the token stream instead (see prepare).
    return n_docs >= 2 / VAL_FRACTION and i % round(1 / VAL_FRACTION) == 5


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass   # e.g. a directory on a platform that cannot sync one
    finally:
        os.close(fd)


def _make_dirs(out_dir: str) -> list[str]:
    """Create out_dir (and missing parents); returns those created, deepest first."""
    made, d = [], os.path.abspath(out_dir)
    while not os.path.exists(d):
        made.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {out_dir} ({e.strerror or e}): choose an --out_dir "
                        f"you may write to") from None
    return made


_STAGE = f".prepare-{socket.gethostname()}-"


def _remove_stale_stages(out_dir: str) -> None:
    """Staging dirs left by a prepare on this host that was killed outright (SIGKILL)."""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return   # unreadable: creating the staging dir will say what is wrong
    for name in names:
        if not name.startswith(_STAGE):
            continue
        try:
            pid = int(name[len(_STAGE):].split("-")[0])
            if pid == os.getpid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
        except (ValueError, OSError):
            pass   # not ours to judge: a live process, or a name we did not make


@contextlib.contextmanager
def _signals_deferred():
    """SIGINT and SIGTERM wait until the block is done, then act as they would have."""
    sigs = (signal.SIGINT, signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or any(
            signal.getsignal(s) is None for s in sigs):
        yield   # handlers can be set only from the main thread (and only Python ones restored)
        return
    got = []
    old = {s: signal.signal(s, lambda n, _: got.append(n)) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            signal.raise_signal(got[0])


def _swap_in(stage: str, out_dir: str) -> None:
    """Move stage/{train.bin,val.bin,meta.json} over out_dir's. The old meta.json goes first
    and the new one comes last, so no moment has a meta.json beside the wrong .bin files."""
    meta_path = os.path.join(out_dir, META)
    try:
        if os.path.lexists(meta_path):
            os.remove(meta_path)
        for name in (*(f"{s}.bin" for s in SPLITS), META):
            os.replace(os.path.join(stage, name), os.path.join(out_dir, name))
        _fsync(out_dir)
    except OSError as e:
        raise DataError(f"could not move the new token files into {out_dir} ({e}); it holds no "
                        f"complete data now: prepare it again") from None


def prepare(documents: Iterable[str], n_docs: int, out_dir: str, *, sources: Sequence[str],
            batch_docs: int = 64, num_threads: Optional[int] = None, progress: bool = True,
            extra_meta: Optional[dict] = None) -> dict:
    """Tokenise `documents` (about n_docs strings; streamed) into out_dir/{train,val}.bin +
    meta.json; returns the meta dict. `sources` names them for the record.

    Tokenised in batches with tiktoken's threaded batch API, into a staging directory inside
    out_dir that replaces the old files only once it is complete (see the module docstring).
    """
    check_options(batch_docs=batch_docs, num_threads=num_threads)
    if not _is_int(n_docs) or n_docs < 1:
        raise DataError("the corpus is empty: no documents to tokenise")
    check_out_dir(out_dir)
    made = _make_dirs(out_dir)
    _remove_stale_stages(out_dir)
    try:
        stage = tempfile.mkdtemp(prefix=f"{_STAGE}{os.getpid()}-", dir=out_dir)
    except OSError as e:
        raise DataError(f"cannot write to {out_dir} ({e.strerror or e}): choose an --out_dir "
                        f"you may write to") from None
    try:
        try:
            meta = _tokenise(documents, n_docs, stage, sources=sources, batch_docs=batch_docs,
                             num_threads=num_threads, progress=progress, extra_meta=extra_meta)
        except OSError as e:   # e.g. the disk filled up: the old data is still whole
            raise DataError(f"could not write the token files in {out_dir} "
                            f"({e.strerror or e}); nothing there was changed") from None
        with _signals_deferred():
            _swap_in(stage, out_dir)
            os.rmdir(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for d in made:    # what we created, if it is still empty: no trace of a failed run
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise
    return meta


def _tokenise(documents: Iterable[str], n_docs: int, stage: str, *, sources: Sequence[str],
              batch_docs: int, num_threads: Optional[int], progress: bool,
              extra_meta: Optional[dict]) -> dict:
    """prepare()'s work, all inside `stage`: train.bin, val.bin, then meta.json (synced)."""
    from tqdm import tqdm
    enc = get_tokenizer()
    doc_split = n_docs >= 2 / VAL_FRACTION
    paths = {s: os.path.join(stage, f"{s}.bin") for s in SPLITS}
    counts = {s: 0 for s in SPLITS}
    n_bytes, start = 0, 0
    threads = num_threads or os.cpu_count() or 1
    with open(paths["train"], "wb") as ftrain, open(paths["val"], "wb") as fval:
        files = {"train": ftrain, "val": fval}
        bar = tqdm(total=n_docs, desc="tokenising", unit="doc", disable=not progress)
        texts = iter(documents)
        while batch := [t for _, t in zip(range(batch_docs), texts)]:
            if not all(isinstance(t, str) for t in batch):
                bad = next(t for t in batch if not isinstance(t, str))
                raise DataError(f"document {start + batch.index(bad)} is a "
                                f"{type(bad).__name__}, not text: pass strings")
            n_bytes += sum(len(t) for t in batch)
            for j, ids in enumerate(enc.encode_ordinary_batch(batch, num_threads=threads)):
                split = "val" if _is_val(start + j, n_docs) else "train"
                arr = np.asarray(ids + [EOT_ID], dtype=np.uint16)  # ids < 50257 fit in uint16
                arr.tofile(files[split])
                counts[split] += arr.size
            start += len(batch)
            bar.update(len(batch))
            bar.set_postfix(tokens=sum(counts.values()))
        bar.close()
    n_docs = start
    if sum(counts.values()) <= n_docs:  # nothing but the separators
        raise DataError(_no_text(sources))
    if not doc_split:
        # Few documents (e.g. one text file): the last 10% of the token stream becomes val.
        allt = np.fromfile(paths["train"], dtype=np.uint16)
        cut = int(len(allt) * (1 - VAL_FRACTION))
        allt[:cut].tofile(paths["train"])
        allt[cut:].tofile(paths["val"])
        counts = {"train": cut, "val": len(allt) - cut}
    meta = {
        "format_version": FORMAT_VERSION, "tokenizer": "gpt2", "vocab_size": N_VOCAB,
        "eot_id": EOT_ID, "dtype": "uint16", "train_tokens": counts["train"],
        "val_tokens": counts["val"], "documents": n_docs, "text_chars": n_bytes,
        "split": {"method": "documents" if doc_split else "tokens",
                  "val_fraction": VAL_FRACTION,
                  "rule": "document i is val iff i % 10 == 5" if doc_split
                  else "last 10% of the token stream is val"},
        "sources": list(sources), **(extra_meta or {}),
    }
    with open(os.path.join(stage, META), "w") as f:
        json.dump(meta, f, indent=1)
    for p in (*paths.values(), os.path.join(stage, META)):
        _fsync(p)   # durable before the swap: a power cut must not leave a meta.json over holes
    return meta


def prepare_builtin(out_dir: Optional[str] = None, progress: bool = True) -> dict:
    out_dir = out_dir or builtin_dir()
    root = sysconfig.get_paths()["stdlib"]
    sources = builtin_sources()
    extra = {"corpus": "python-stdlib", "python": platform.python_version(), "stdlib": root,
             "max_bytes": BUILTIN_MAX_BYTES,
             "sources_sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest()}
    return prepare((read_text(p) for p in sources), len(sources), out_dir,
                   sources=[os.path.relpath(p, root) for p in sources], progress=progress,
                   extra_meta=extra)


def prepare_files(paths: Sequence[str], out_dir: str, *, extra_meta: Optional[dict] = None,
                  **kw) -> dict:
    """Text files and directories (see select_text_files) -> out_dir. meta.json also lists
    the files skipped as not text and, per file, the bytes that were not UTF-8."""
    files, skipped = select_text_files(paths)
    replaced: dict = {}   # filled while the documents stream; meta is built after the stream
    extra = {**(extra_meta or {}), "skipped": skipped, "not_utf8": replaced}
    return prepare((read_source(p, replaced) for p in files), len(files), out_dir,
                   sources=files, extra_meta=extra, **kw)


# -- reading token files -------------------------------------------------------------------

class DamagedData(DataError):
    """A prepared directory whose files are missing, damaged or inconsistent."""

    def __init__(self, data_dir: str, problem: str):
        self.dir, self.problem = data_dir, problem
        super().__init__(f"{problem}: prepare it again (python prepare.py --input TEXT... "
                         f"--out_dir {data_dir})")


def read_meta(data_dir: str) -> dict:
    """meta.json as a dict (not yet checked: see check_meta)."""
    path = os.path.join(data_dir, META)
    if not os.path.isfile(path):
        raise DataError(f"{data_dir} holds no {META}: it is not a prepared token directory "
                        f"(python prepare.py --input TEXT... --out_dir {data_dir})")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:   # ValueError: bad JSON or bytes that are not UTF-8
        raise DamagedData(data_dir, f"{path} is unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise DamagedData(data_dir, f"{path} is not a JSON object (it holds a "
                                    f"{type(meta).__name__}): it is damaged")
    return meta


def check_meta(meta: dict, data_dir: str) -> None:
    """The fields readers rely on are there, with the right types and values."""
    path = os.path.join(data_dir, META)
    need = ("format_version", "tokenizer", "vocab_size", "dtype", "train_tokens", "val_tokens")
    missing = [k for k in need if k not in meta]
    if missing:
        raise DamagedData(data_dir, f"{path} lacks {', '.join(missing)}: it is damaged")
    if meta["format_version"] != FORMAT_VERSION or not _is_int(meta["format_version"]):
        raise DamagedData(data_dir, f"{path} has format_version {meta['format_version']!r}; "
                                    f"this gpt_jax reads {FORMAT_VERSION}")
    if meta["tokenizer"] != "gpt2":
        raise DamagedData(data_dir, f"{path} does not describe GPT-2 BPE tokens "
                                    f"(tokenizer={meta['tokenizer']!r})")
    for key, want in (("vocab_size", N_VOCAB), ("dtype", "uint16")):
        if meta[key] != want or type(meta[key]) is not type(want):
            raise DamagedData(data_dir, f"{path} has {key} {meta[key]!r}, not {want!r}: it "
                                        f"is damaged")
    for s in SPLITS:
        n = meta[f"{s}_tokens"]
        if not _is_int(n) or n < 1:
            raise DamagedData(data_dir, f"{path} has {s}_tokens {n!r}, not a positive "
                                        f"integer: it is damaged")


def load_split(data_dir: str, split: str, n_tokens: Optional[int] = None) -> np.memmap:
    """split.bin memmapped, its size checked (and against n_tokens when given)."""
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise DamagedData(data_dir, f"{path} is missing or empty")
    size = os.path.getsize(path)
    if size % 2:
        raise DamagedData(data_dir, f"{path} has an odd size ({size} bytes) but holds 2-byte "
                                    f"tokens: it is damaged")
    if n_tokens is not None and size // 2 != n_tokens:
        raise DamagedData(data_dir, f"{path} holds {size // 2} tokens but {META} says "
                                    f"{n_tokens}: it is damaged")
    try:
        return np.memmap(path, dtype=np.uint16, mode="r")
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror or e})") from None


def check_token_ids(tokens: np.ndarray, vocab_size: int, data_dir: str, split: str) -> None:
    """Every id < vocab_size: one vectorised pass (bytes written over a .bin file make ids up
    to 65535, which the embedding lookup would turn into NaN losses, not an error)."""
    top = int(tokens.max())
    if top >= vocab_size:
        raise DamagedData(data_dir, f"{os.path.join(data_dir, split + '.bin')} holds token id "
                                    f"{top}, but ids stop at {vocab_size - 1}: it is damaged")


def check_dir(data_dir: str) -> tuple[dict, dict]:
    """(meta, {split: memmap}) of a prepared directory, all checked; DataError if not."""
    meta = read_meta(data_dir)
    check_meta(meta, data_dir)
    splits = {s: load_split(data_dir, s, meta[f"{s}_tokens"]) for s in SPLITS}
    for s, arr in splits.items():
        check_token_ids(arr, meta["vocab_size"], data_dir, s)
    return meta, splits


def _reusable(data_dir: str, stamp=None) -> bool:
    """Whether a directory resolve() prepares holds complete, undamaged data (made from
    `stamp`'s files when given). Says why when it is damaged: it is then prepared again."""
    if not os.path.lexists(os.path.join(data_dir, META)):
        return False
    try:
        meta, _ = check_dir(data_dir)
    except DataError as e:
        print(f"{data_dir} is damaged ({getattr(e, 'problem', e)}); preparing it again",
              flush=True)
        return False
    return stamp is None or meta.get("stamp") == stamp


def resolve(data: str, *, cache_dir: Optional[str] = None, progress: bool = True) -> str:
    """A prepared token directory for --data: `builtin` (prepared once into builtin_dir()),
    a directory with meta.json, or text files/dirs (comma-separated; tokenised into
    cache_dir, reused while the sources are unchanged). A damaged builtin or cache directory
    is prepared again."""
    if data == "builtin":
        d = builtin_dir()
        if not _reusable(d):
            print(f"preparing the built-in corpus (Python {platform.python_version()} stdlib) "
                  f"into {d} ...", flush=True)
            prepare_builtin(d, progress=progress)
        return d
    paths = [p for p in data.split(",") if p]
    if not paths:
        raise DataError("--data is empty: pass `builtin`, a prepared directory or text files")
    if len(paths) == 1 and os.path.isfile(os.path.join(paths[0], META)):
        return paths[0]
    candidates = candidate_files(paths)
    if cache_dir is None:
        raise DataError(f"{data} is not a prepared token directory: run prepare.py first")
    stamp = [[p, os.path.getsize(p), os.path.getmtime(p)] for p, _ in candidates]
    if _reusable(cache_dir, stamp):
        return cache_dir
    print(f"tokenising {len(candidates)} file(s) from {data} into {cache_dir} ...", flush=True)
    prepare_files(paths, cache_dir, progress=progress, extra_meta={"stamp": stamp})
    return cache_dir


class TokenData:
    """The two memmapped splits of a prepared directory, checked (check_dir) and checked
    against the model."""

    def __init__(self, data_dir: str, *, block_size: int, vocab_size: int):
        self.dir = data_dir
        self.meta, self.splits = check_dir(data_dir)
        meta_vocab = self.meta["vocab_size"]
        if meta_vocab > vocab_size:
            raise DataError(f"the tokens in {data_dir} use a vocabulary of {meta_vocab} ids but "
                            f"the model's vocab_size is {vocab_size}: use --vocab_size "
                            f"{meta_vocab} (or more) or other data")
        for s, arr in self.splits.items():
            if len(arr) < block_size + 1:
                raise DataError(f"the {s} split of {data_dir} has {len(arr)} tokens, fewer "
                                f"than block_size + 1 = {block_size + 1}: use more text or a "
                                f"smaller --block_size")


def _windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    return np.stack([tokens[s:s + length] for s in starts]).astype(np.int32)


class BatchSampler:
    """Random windows of block_size + 1 tokens. Stateless apart from (seed, step)."""

    def __init__(self, data: TokenData, *, block_size: int, batch_size: int, accum: int = 1,
                 seed: int = 0):
        self.data, self.T, self.B, self.accum, self.seed = data, block_size, batch_size, accum, seed

    def _starts(self, split: str, n: int, stream: Sequence[int]) -> np.ndarray:
        hi = len(self.data.splits[split]) - (self.T + 1)   # last valid start, inclusive
        return np.random.default_rng([self.seed, *stream]).integers(0, hi + 1, size=n)

    def train_batch(self, step: int) -> np.ndarray:
        """int32 (accum, batch_size, block_size + 1) for optimizer step `step`."""
        starts = self._starts("train", self.accum * self.B, (0, step))
        return _windows(self.data.splits["train"], starts, self.T + 1).reshape(
            self.accum, self.B, self.T + 1)

    def eval_batches(self, split: str, step: int, n: int) -> np.ndarray:
        """int32 (n, batch_size, block_size + 1): eval at `step`, independent of training."""
        starts = self._starts(split, n * self.B, (1 + SPLITS.index(split), step))
        return _windows(self.data.splits[split], starts, self.T + 1).reshape(
            n, self.B, self.T + 1)

    def state(self, step: int) -> dict:
        return {"kind": "step-indexed", "seed": self.seed, "next_step": int(step)}
