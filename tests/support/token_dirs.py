"""Helpers shared by test_corpus, test_textfiles and test_data: text files, snapshots of a
directory, a small prepared token directory."""
import os

import gpt_jax.data.prepare as corpus

import gpt_jax.data as data


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def snapshot(d):
    """{name: bytes} of every file under d (hidden and nested ones too)."""
    out = {}
    for root, _, names in os.walk(d):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, d)] = f.read()
    return out


def good_dir(path):
    corpus.prepare(["some text " * 50] * 3, 3, str(path), sources=["x"], progress=False)
    data.TokenData(str(path), block_size=4, vocab_size=50257)
    return snapshot(path)
