"""--data as a prepared token directory: `builtin`, a prepared directory, or text files
tokenised into a cache directory (prepared again when damaged or when their sources changed)."""
from __future__ import annotations

import os
import platform
from typing import Optional

import gpt_jax.data.builtin as builtin_corpus
import gpt_jax.data.prepare as corpus
import gpt_jax.data.textfiles as textfiles
from gpt_jax.data.format import META, check_dir
from gpt_jax.errors import DataError


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
    cache_dir, reused while the sources are unchanged). A damaged builtin or cache directory,
    or a builtin one prepared by other code or another Python, is prepared again."""
    if data == "builtin":
        d = corpus.builtin_dir()
        if not _reusable(d, builtin_corpus.stamp()):   # e.g. an older version's corpus
            print(f"preparing the built-in corpus (Python {platform.python_version()} stdlib docs) "
                  f"into {d} ...", flush=True)
            corpus.prepare_builtin(d, progress=progress)
        return d
    paths = [p for p in data.split(",") if p]
    if not paths:
        raise DataError("--data is empty: pass `builtin`, a prepared directory or text files")
    if len(paths) == 1 and os.path.isfile(os.path.join(paths[0], META)):
        return paths[0]
    candidates = textfiles.candidate_files(paths)
    if cache_dir is None:
        raise DataError(f"{data} is not a prepared token directory: run prepare.py first")
    stamp = [[p, os.path.getsize(p), os.path.getmtime(p)] for p, _ in candidates]
    if _reusable(cache_dir, stamp):
        return cache_dir
    print(f"tokenising {len(candidates)} file(s) from {data} into {cache_dir} ...", flush=True)
    corpus.prepare_files(paths, cache_dir, progress=progress, extra_meta={"stamp": stamp})
    return cache_dir
