"""Documents -> a prepared token directory: `train.bin` / `val.bin` (uint16, flat) + `meta.json`.

Format (docs/design.md "Files"; gpt_jax/data/tokens.py reads it): documents are GPT-2 BPE tokens, each
followed by `<|endoftext|>`, concatenated into one flat uint16 array per split. meta.json records
the tokenizer, vocab size, token counts, sources and how the split was made; its presence means
both .bin files are complete. Documents come from any iterable of strings (prepare), the user's
text files (prepare_files, through gpt_jax/data/textfiles.py) or the built-in corpus
(prepare_builtin).

Nothing is lost: prepare() checks its options, its inputs and out_dir first, tokenises into a
hidden staging directory inside out_dir, and only then swaps the new files in (old meta.json
out first, new one in last, with SIGINT/SIGTERM held off for those few renames). A prepare
that fails or is interrupted before the swap leaves the old directory exactly as it was;
a crash inside the swap leaves no meta.json, so a mix of old and new is never read.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
from typing import Iterable, Optional, Sequence

import numpy as np

import gpt_jax.data.builtin as builtin_corpus
from gpt_jax.data.format import FORMAT_VERSION, META, SPLITS
from gpt_jax.errors import ConfigError, DataError, UserError, is_network_error, offline_note
from gpt_jax.data.textfiles import no_text, read_source, select_text_files
from gpt_jax.model.tokenizer import EOT_ID, N_VOCAB, get_tokenizer

VAL_FRACTION = 0.1   # of the documents (with few documents: of the tokens) that go to val

# The built-in corpus (gpt_jax/data/builtin.py): the docstrings of the standard library's .py
# files and its reference manual, prepared on first use into builtin_dir() (relative to the working directory, like out/; override with $GPT_JAX_DATA).
# Skipped: site-packages/ (not the stdlib), test dirs (huge generated data files), caches.
BUILTIN_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__",
                     "idle_test", "lib2to3", "ensurepip", "config-3"}
BUILTIN_MAX_BYTES = 24 << 20   # cap (files in sorted order): keeps prepare to a few seconds


def builtin_dir() -> str:
    return os.environ.get("GPT_JAX_DATA") or os.path.join("data", "builtin")


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


# -- writing token files ---------------------------------------------------------------------

def _is_val(i: int, n_docs: int) -> bool:
    # Every 10th document goes to val (spread over the sorted sources, not the tail, so val
    # looks like train). With < 20 documents, split the token stream instead (see prepare).
    return n_docs >= 2 / VAL_FRACTION and i % round(1 / VAL_FRACTION) == 5


def sync_file(path: str) -> None:
    """Flush a file (or a directory's entries) to the disk."""
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
        sync_file(out_dir)
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
        raise DataError(no_text(sources))
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
        sync_file(p)   # durable before the swap: a power cut must not leave a meta.json over holes
    return meta


# -- the sources -----------------------------------------------------------------------------

def prepare_builtin(out_dir: Optional[str] = None, progress: bool = True) -> dict:
    """The built-in corpus (gpt_jax/data/builtin.py: the docstrings of builtin_sources()
    and the reference manual) -> out_dir (default: builtin_dir())."""
    docs, sources = builtin_corpus.documents(builtin_sources())
    return prepare(docs, len(docs), out_dir or builtin_dir(), sources=sources,
                   progress=progress,
                   extra_meta={**builtin_corpus.meta(docs, sources),
                               "max_bytes": BUILTIN_MAX_BYTES})


def prepare_files(paths: Sequence[str], out_dir: str, *, extra_meta: Optional[dict] = None,
                  **kw) -> dict:
    """Text files and directories (see select_text_files) -> out_dir. meta.json also lists
    the files skipped as not text and, per file, the bytes that were not UTF-8."""
    files, skipped = select_text_files(paths)
    replaced: dict = {}   # filled while the documents stream; meta is built after the stream
    extra = {**(extra_meta or {}), "skipped": skipped, "not_utf8": replaced}
    return prepare((read_source(p, replaced) for p in files), len(files), out_dir,
                   sources=files, extra_meta=extra, **kw)


def hf_documents(name: str, config: Optional[str], split: str, field: str,
                 max_docs: int) -> Iterable[str]:
    """The texts of a Hugging Face dataset (streamed; needs the `datasets` package)."""
    try:
        import datasets
    except ImportError:
        raise UserError("--hf_dataset needs the `datasets` package: pip install 'gpt-jax[data]'")
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        if not is_network_error(e):
            raise
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"--hf_dataset {name} streams from the Hugging Face Hub, which cannot "
                        f"be reached ({why}{offline_note()}): it needs the network; offline, "
                        f"save the texts as files and pass --input PATH") from None

    def texts():    # the stream can drop too, mid-way: one line, and the old data stays
        try:
            yield from row_texts(ds, name, field, max_docs)
        except Exception as e:
            if not is_network_error(e):
                raise
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise DataError(f"--hf_dataset {name}: the stream from the Hugging Face Hub broke "
                            f"off ({why}); nothing was replaced: run it again") from None
    return texts()


def row_texts(rows, name: str, field: str, max_docs: int) -> Iterable[str]:
    """The `field` of each row, up to max_docs; a row without a text there is an error."""
    for i, row in zip(range(max_docs), rows):
        text = row.get(field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            fields = ", ".join(map(str, row)) if isinstance(row, dict) else type(row).__name__
            raise DataError(f"row {i} of {name} has no text field {field!r} (it has: "
                            f"{fields}): pass --hf_text_field")
        yield text
