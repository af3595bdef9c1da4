"""Token data: text -> `train.bin` / `val.bin` (uint16, flat) + `meta.json`; a batch sampler.

Format (DESIGN.md "Files"): documents are GPT-2 BPE tokens, each followed by `<|endoftext|>`,
concatenated into one flat uint16 array per split. meta.json (written last, so its presence
means both .bin files are complete) records the tokenizer, vocab size, token counts, sources
and how the split was made.

The sampler is step-indexed: the windows of step s come from np.random.default_rng([seed, 0, s])
alone, so the sampler's whole state is (seed, step) and a resumed run draws exactly the batches
the uninterrupted run would have. Eval batches use their own stream ([seed, 1 + split, step]),
so evaluating more or less often never changes the training batches.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
from typing import Iterable, Optional, Sequence

import numpy as np

from gpt_jax.errors import DataError
from gpt_jax.tokenizer import EOT_ID, N_VOCAB, get_tokenizer

FORMAT_VERSION = 1
META = "meta.json"
SPLITS = ("train", "val")
VAL_FRACTION = 0.1
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst", ".json", ".html", ".c", ".h", ".tex", ".csv")

# The built-in corpus: the source of Python's standard library, prepared on first use into
# BUILTIN_DIR (relative to the working directory, like out/; override with $GPT_JAX_DATA).
# Skipped: site-packages/ (not the stdlib), test dirs (huge generated data files), caches.
BUILTIN_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "__pycache__",
                     "idle_test", "lib2to3", "ensurepip", "config-3"}
BUILTIN_MAX_BYTES = 24 << 20   # cap (files in sorted order): keeps prepare to a few seconds


def builtin_dir() -> str:
    return os.environ.get("GPT_JAX_DATA") or os.path.join("data", "builtin")


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


def text_sources(paths: Sequence[str]) -> list[str]:
    """Files named directly, plus text-like files under directories (sorted, recursive)."""
    out = []
    for p in paths:
        if os.path.isfile(p):
            out.append(p)
        elif os.path.isdir(p):
            for d, dirs, names in os.walk(p):
                dirs[:] = sorted(x for x in dirs if not x.startswith("."))
                out += [os.path.join(d, n) for n in sorted(names)
                        if n.endswith(TEXT_SUFFIXES) and not n.startswith(".")]
        else:
            raise DataError(f"data path {p} does not exist: pass text files, directories of "
                            f"text, a prepared dir (with {META}) or `builtin`")
    if not out:
        raise DataError(f"no text files found in {', '.join(paths)} (looked for "
                        f"{', '.join(TEXT_SUFFIXES)}): pass files with text in them")
    return out


def read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


# -- writing token files ---------------------------------------------------------------------

def _is_val(i: int, n_docs: int) -> bool:
    # Every 10th document goes to val (spread over the sorted sources, not the tail, so val
    # looks like train). With < 20 documents, split the token stream instead (see prepare).
    return n_docs >= 2 / VAL_FRACTION and i % round(1 / VAL_FRACTION) == 5


def _atomic_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def prepare(documents: Iterable[str], n_docs: int, out_dir: str, *, sources: Sequence[str],
            batch_docs: int = 64, num_threads: Optional[int] = None, progress: bool = True,
            extra_meta: Optional[dict] = None) -> dict:
    """Tokenise `documents` (about n_docs strings; streamed) into out_dir/{train,val}.bin +
    meta.json; returns the meta dict. `sources` names them for the record.

    Tokenised in batches with tiktoken's threaded batch API. The old meta.json goes first and
    the new one is written last, after both .bin files are renamed into place: an interrupted
    prepare leaves no directory that looks complete.
    """
    from tqdm import tqdm
    enc = get_tokenizer()
    os.makedirs(out_dir, exist_ok=True)
    meta_path = os.path.join(out_dir, META)
    if os.path.exists(meta_path):
        os.remove(meta_path)
    if n_docs == 0:
        raise DataError("the corpus is empty: no documents to tokenise")
    doc_split = n_docs >= 2 / VAL_FRACTION
    tmp = {s: os.path.join(out_dir, f"{s}.bin.tmp") for s in SPLITS}
    files = {s: open(tmp[s], "wb") for s in SPLITS}
    counts = {s: 0 for s in SPLITS}
    n_bytes = 0
    threads = num_threads or os.cpu_count() or 1
    try:
        bar = tqdm(total=n_docs, desc="tokenising", unit="doc", disable=not progress)
        texts, start = iter(documents), 0
        while batch := [t for _, t in zip(range(batch_docs), texts)]:
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
    finally:
        for f in files.values():
            f.close()
    n_docs = start
    if sum(counts.values()) <= n_docs:  # nothing but the separators
        for p in tmp.values():
            os.remove(p)
        raise DataError(f"the corpus ({', '.join(sources[:3])}{', ...' if n_docs > 3 else ''}) "
                        f"holds no text: pass non-empty files")
    if not doc_split:
        # Few documents (e.g. one text file): the last 10% of the token stream becomes val.
        allt = np.fromfile(tmp["train"], dtype=np.uint16)
        cut = int(len(allt) * (1 - VAL_FRACTION))
        allt[:cut].tofile(tmp["train"])
        allt[cut:].tofile(tmp["val"])
        counts = {"train": cut, "val": len(allt) - cut}
    for s in SPLITS:
        os.replace(tmp[s], os.path.join(out_dir, f"{s}.bin"))
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
    _atomic_json(meta_path, meta)
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


def prepare_files(paths: Sequence[str], out_dir: str, **kw) -> dict:
    """Text files and directories (see text_sources) -> out_dir."""
    files = text_sources(paths)
    return prepare((read_text(p) for p in files), len(files), out_dir, sources=files, **kw)


# -- reading token files -------------------------------------------------------------------

def read_meta(data_dir: str) -> dict:
    path = os.path.join(data_dir, META)
    if not os.path.isfile(path):
        raise DataError(f"{data_dir} holds no {META}: it is not a prepared token directory "
                        f"(python prepare.py --input TEXT... --out_dir {data_dir})")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is unreadable ({e}); prepare the data again") from None


def load_split(data_dir: str, split: str) -> np.memmap:
    path = os.path.join(data_dir, f"{split}.bin")
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        raise DataError(f"{path} is missing or empty; prepare the data again")
    return np.memmap(path, dtype=np.uint16, mode="r")


def resolve(data: str, *, cache_dir: Optional[str] = None, progress: bool = True) -> str:
    """A prepared token directory for --data: `builtin` (prepared once into builtin_dir()),
    a directory with meta.json, or text files/dirs (comma-separated; tokenised into
    cache_dir, reused while the sources are unchanged)."""
    if data == "builtin":
        d = builtin_dir()
        if not os.path.isfile(os.path.join(d, META)):
            print(f"preparing the built-in corpus (Python {platform.python_version()} stdlib) "
                  f"into {d} ...", flush=True)
            prepare_builtin(d, progress=progress)
        return d
    paths = [p for p in data.split(",") if p]
    if len(paths) == 1 and os.path.isfile(os.path.join(paths[0], META)):
        return paths[0]
    sources = text_sources(paths)
    if cache_dir is None:
        raise DataError(f"{data} is not a prepared token directory: run prepare.py first")
    stamp = [[p, os.path.getsize(p), os.path.getmtime(p)] for p in sources]
    meta_path = os.path.join(cache_dir, META)
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            if json.load(f).get("stamp") == stamp:
                return cache_dir
    print(f"tokenising {len(sources)} file(s) from {data} into {cache_dir} ...", flush=True)
    prepare_files(sources, cache_dir, progress=progress, extra_meta={"stamp": stamp})
    return cache_dir


class TokenData:
    """The two memmapped splits of a prepared directory, checked against the model."""

    def __init__(self, data_dir: str, *, block_size: int, vocab_size: int):
        self.dir = data_dir
        self.meta = read_meta(data_dir)
        meta_vocab = self.meta.get("vocab_size")
        if self.meta.get("tokenizer") != "gpt2" or not isinstance(meta_vocab, int):
            raise DataError(f"{data_dir}/{META} does not describe GPT-2 BPE tokens "
                            f"(tokenizer={self.meta.get('tokenizer')!r}); prepare it again")
        if meta_vocab > vocab_size:
            raise DataError(f"the tokens in {data_dir} use a vocabulary of {meta_vocab} ids but "
                            f"the model's vocab_size is {vocab_size}: use --vocab_size "
                            f"{meta_vocab} (or more) or other data")
        self.splits = {s: load_split(data_dir, s) for s in SPLITS}
        for s, arr in self.splits.items():
            if len(arr) != self.meta.get(f"{s}_tokens", len(arr)):
                raise DataError(f"{data_dir}/{s}.bin holds {len(arr)} tokens but {META} says "
                                f"{self.meta[f'{s}_tokens']}: prepare the data again")
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
