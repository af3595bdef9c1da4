"""The built-in corpus: English prose from Python's standard library, so nothing is downloaded.

Two kinds of documents, in this order:
  - one per stdlib module (the .py files corpus.builtin_sources() picks, sorted): the
    docstrings of the module and of its classes and functions, in source order; modules
    without docstrings are left out;
  - one per topic of `pydoc_data.topics` (the Python reference manual as plain text, which
    `help()` shows), in sorted order of the topic names.
Spacing is normalised: every line loses its indentation, runs of spaces become one space and
blank lines are dropped (code examples in the docstrings lose their layout; the prose is what
a first run should learn).

Why prose and not the source itself: to GPT-2's BPE, Python source is mostly indentation, and
a model small enough to train in minutes on a CPU learns to emit runs of spaces long before it
learns words. The docstrings and the manual are English about Python (about 2M characters,
0.5M tokens with Python 3.11), so a first run ends on samples a person recognises.

Why no whitespace-only tokens at all: GPT-2's BPE writes a run of spaces as one " " token per
space and a blank line as two "\\n" tokens. A model trained for minutes has learned that such a
token is often followed by another one, but not yet how many, and at sampling time it loops on
it: pages of spaces, or dozens of empty lines that leave no room for words. Without indentation,
double spaces and blank lines, " " is rare and "\\n" never follows "\\n", so neither can loop.
"""
from __future__ import annotations

import ast
import hashlib
import os
import platform
import sysconfig
from typing import Iterator, Sequence

from gpt_jax.data.textfiles import read_text

NAME = "python-stdlib-docs"
METHOD = ("per module (the sorted .py files of the stdlib, no site-packages/test dirs): its "
          "docstrings (ast, source order); then per topic of pydoc_data.topics (sorted names); "
          "every line without indentation and with single spaces, blank lines dropped")
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def normalise(text: str) -> str:
    """text with each line stripped, its runs of whitespace made one space, and its blank lines
    dropped (why: the module docstring)."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _docstrings(node: ast.AST) -> Iterator[str]:
    """The docstrings of node and the classes/functions inside it, depth first in source
    order (ast.walk is breadth first, which would separate a class from its methods)."""
    if isinstance(node, _DOC_NODES):
        doc = ast.get_docstring(node, clean=False)
        if doc and doc.strip():
            yield normalise(doc)
    for child in ast.iter_child_nodes(node):
        yield from _docstrings(child)


def module_docs(source: str) -> str:
    """All docstrings of one module's source, normalised, one after another ("" if none or if
    the file does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):   # ValueError: NUL bytes
        return ""
    return "\n".join(_docstrings(tree))


def topics() -> dict[str, str]:
    """pydoc_data.topics.topics of the running Python: topic name -> reference-manual text."""
    from pydoc_data.topics import topics as t
    return dict(t)


def documents(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """(documents, their sources) from the stdlib's .py files `paths` and the reference manual,
    in the fixed order of the module docstring."""
    root = stdlib_root()
    docs, sources = [], []
    for path in paths:
        text = module_docs(read_text(path))
        if text:
            docs.append(text)
            sources.append(os.path.relpath(path, root))
    for name, text in sorted(topics().items()):
        text = normalise(text)
        if text:
            docs.append(text)
            sources.append(f"pydoc_data/topics.py:{name}")
    return docs, sources


def stamp() -> dict:
    """What makes a prepared built-in corpus the one this code would prepare: data.resolve
    prepares it again when meta.json's "stamp" differs (an older corpus, another Python)."""
    return {"corpus": NAME, "method": METHOD, "python": platform.python_version()}


def meta(docs: list[str], sources: list[str]) -> dict:
    """What meta.json records about the built-in corpus, beyond prepare()'s own keys;
    text_sha256 hashes the documents joined by NUL (UTF-8): equal hashes, equal corpus."""
    text = "\0".join(docs).encode("utf-8", errors="surrogatepass")
    return {"corpus": NAME, "python": platform.python_version(), "stdlib": stdlib_root(),
            "method": METHOD, "stamp": stamp(),
            "sources_sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
            "text_sha256": hashlib.sha256(text).hexdigest()}
