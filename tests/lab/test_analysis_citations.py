"""docs/analysis.md cites Hugging Face's transformers and nanoGPT by `file.py:LINE`: every
citation must be a row of gpt_jax/lab/analysis_sources.py, and every transformers row must
still say what the doc says it does in the installed transformers (the pinned 5.24.0)."""
import os
import re

import pytest

import gpt_jax.lab.analysis_sources as sources
from conftest import ROOT

DOC = os.path.join(ROOT, "docs", "analysis.md")


def installed_transformers():
    found = sources.transformers_root()
    if found is None:
        pytest.skip("transformers is not installed: the citations cannot be read")
    version, root = found
    if version != sources.TRANSFORMERS_VERSION:
        pytest.skip(f"transformers {version} is installed; docs/analysis.md cites the lines "
                    f"of {sources.TRANSFORMERS_VERSION}")
    return root


def test_every_citation_in_the_doc_is_checked_or_listed():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    cited = sources.doc_citations(text)
    assert len(cited) > 100, cited                     # the doc cites by line, and is parsed
    unknown = [c for c in cited
               if c not in sources.TRANSFORMERS and c not in sources.NANOGPT]
    assert not unknown, f"cited in docs/analysis.md, absent from analysis_sources: {unknown}"
    assert sources.TRANSFORMERS_VERSION in text
    for name, commit in sources.NANOGPT_COMMITS.items():
        assert commit[:12] in text, (name, commit)     # the doc names the commit it read


def test_the_cited_version_is_the_pinned_one():
    with open(os.path.join(ROOT, ".ci", "constraints.txt"), encoding="utf-8") as f:
        pins = dict(re.findall(r"^([\w.-]+)==(\S+)", f.read(), re.M))
    assert pins["transformers"] == sources.TRANSFORMERS_VERSION


def test_transformers_lines_still_say_what_the_doc_says():
    root = installed_transformers()
    assert sources.stale_citations(sources.TRANSFORMERS, root,
                                   sources.TRANSFORMERS_FILES) == []


def test_a_line_that_moved_is_reported():
    root = installed_transformers()
    moved = {("modeling_gpt2.py", 100): "self.scaling = self.head_dim**-0.5",   # it is on 99
             ("cache_utils.py", 10**6): "class DynamicCache(Cache):"}
    bad = sources.stale_citations(moved, root, sources.TRANSFORMERS_FILES)
    assert len(bad) == 2 and "modeling_gpt2.py:100" in bad[1] and "<past the end>" in bad[0]


def test_nanogpt_lines_in_a_checkout():
    """No nanoGPT checkout offline: NANOGPT_DIR=<karpathy/nanoGPT at the NANOGPT_COMMITS>."""
    root = os.environ.get("NANOGPT_DIR")
    if not root:
        pytest.skip("set NANOGPT_DIR to a nanoGPT checkout at "
                    f"{sources.NANOGPT_COMMITS} to check its citations")
    assert sources.stale_citations(sources.NANOGPT, root) == []
