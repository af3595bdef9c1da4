"""Figures that say whether samples look like their training corpus (issue 16's yardstick).

    corpus = CorpusStats.from_text(training_text)
    figs = sample_figures(samples, corpus)
    # {"words": 412, "in_corpus": 0.83, "whitespace": 0.19, "corpus_whitespace": 0.18}

Both sides are judged on their non-blank text: lines holding only whitespace are dropped, and
`<|endoftext|>` (a document separator, not text) counts as a line break. A word is a
whitespace-separated string, compared exactly (punctuation included) with the corpus's words.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from gpt_jax.model.tokenizer import EOT_TOKEN


def nonblank(text: str) -> str:
    """text without <|endoftext|> markers and without its whitespace-only lines."""
    lines = text.replace(EOT_TOKEN, "\n").splitlines()
    return "\n".join(line for line in lines if line.strip())


def whitespace_share(text: str) -> float:
    """Fraction of the characters of nonblank(text) that are whitespace (line breaks
    included); 0 for empty text."""
    t = nonblank(text)
    return sum(c.isspace() for c in t) / len(t) if t else 0.0


@dataclass(frozen=True)
class CorpusStats:
    words: frozenset
    whitespace: float

    @classmethod
    def from_text(cls, text: str) -> "CorpusStats":
        return cls(frozenset(text.replace(EOT_TOKEN, "\n").split()), whitespace_share(text))


def sample_figures(samples: Iterable[str], corpus: CorpusStats) -> dict:
    """words: whitespace-separated words in all samples together; in_corpus: the fraction of
    them that occur as words in the corpus (0 with no words); whitespace: the samples' share of
    whitespace characters, corpus_whitespace the corpus's (issue 16 asks for >= 150 words,
    in_corpus >= 0.7, whitespace <= corpus_whitespace + 0.10 for 3 samples of sample.py)."""
    texts = [nonblank(s) for s in samples]
    words = [w for t in texts for w in t.split()]
    joined = "\n".join(t for t in texts if t)
    return {"words": len(words),
            "in_corpus": sum(w in corpus.words for w in words) / len(words) if words else 0.0,
            "whitespace": whitespace_share(joined),
            "corpus_whitespace": corpus.whitespace}
