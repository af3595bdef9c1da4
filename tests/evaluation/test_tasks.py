"""gpt_jax.evaluation.tasks: hellaswag / lambada / text aggregates on small synthetic files against the
same metrics computed from transformers' log-probs (tests/support/scoring_reference.py), and the
one-line errors for bad data."""
import json
import math

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference needs torch (pip install .[test])")
pytest.importorskip("transformers", reason="the reference needs transformers (pip install .[test])")

import gpt_jax
import gpt_jax.evaluation.tasks as tasks
from gpt_jax.errors import DataError, UserError

from scoring_reference import (hf_logprobs, ref_loglikelihood, ref_token_logprobs,
                               reference_pair, top_two_gap)

BLOCK = 32
CFG = gpt_jax.GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK, vocab_size=50304)
TOL = 1e-4
WORDS = ("the cat sat on a mat while dogs ran far away into deep green woods and never came "
         "back home again, singing loudly").split()


@pytest.fixture(scope="module")
def model():
    return reference_pair(CFG)


def sentence(rng, n):
    return " ".join(rng.choice(WORDS, n))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_hellaswag(model, tmp_path):
    params, hf = model
    enc = gpt_jax.get_tokenizer()
    rng = np.random.default_rng(0)
    rows = [{"ctx": sentence(rng, int(rng.integers(2, 12))),
             "endings": [sentence(rng, int(rng.integers(1, 9))) for _ in range(4)]}
            for _ in range(8)]
    sums, means = [], []
    for r in rows:   # build-nanogpt: " " + ending, encoded apart from the context
        scores = [ref_loglikelihood(hf, BLOCK, enc.encode(r["ctx"]), enc.encode(" " + e))[0]
                  for e in r["endings"]]
        lens = [len(enc.encode(" " + e)) for e in r["endings"]]
        sums.append(np.argmax(scores))
        means.append(np.argmax(np.array(scores) / lens))
    # acc_norm's choices as labels: acc then counts only the rows where the two argmaxes agree.
    for i, r in enumerate(rows):
        r["label"] = int(means[i])
    labels = [r["label"] for r in rows]
    expect_acc = np.mean([s == l for s, l in zip(sums, labels)])
    expect_norm = np.mean([m == l for m, l in zip(means, labels)])
    assert expect_acc != expect_norm          # the data tells the two metrics apart
    rows[3]["label"] = str(rows[3]["label"])  # Hugging Face's copy has string labels
    path = write_jsonl(tmp_path / "hs.jsonl", rows)
    out = tasks.run_task(params, CFG, "hellaswag", path)
    assert out["task"] == "hellaswag" and out["n"] == 8
    assert out["acc"] == pytest.approx(expect_acc) and out["acc_norm"] == pytest.approx(expect_norm)
    requests, labels, _ = tasks.hellaswag_requests(path, CFG, limit=3)    # --limit: rows
    assert len(labels) == 3 and len(requests) == 12


def greedy_word_text(hf, rng, enc):
    """A text whose last word is the model's greedy next token (so lambada's acc is not 0):
    a context whose argmax token is " word", and whose text re-encodes to context + that."""
    for _ in range(200):
        ctx = sentence(rng, int(rng.integers(3, 10)))
        ids = enc.encode(ctx)
        t, gap = top_two_gap(hf_logprobs(hf, ids, [-1])[0])
        word = enc.decode([t])
        if t < 50256 and gap > 1e-3 and word.startswith(" ") and word[1:].isalpha() and \
                enc.encode(ctx + word) == ids + [t]:
            return ctx + word
    raise AssertionError("no greedy word found")


def test_lambada(model, tmp_path):
    params, hf = model
    enc = gpt_jax.get_tokenizer()
    rng = np.random.default_rng(1)
    texts = [sentence(rng, int(rng.integers(2, 40))) for _ in range(5)]
    texts.append(greedy_word_text(hf, rng, enc))
    logps, greedy = [], []
    for text in texts:   # lm-eval's split: encode the whole, the context's tokens first
        whole, ctx = enc.encode(text), enc.encode(text.rpartition(" ")[0])
        lp, g = ref_loglikelihood(hf, BLOCK, ctx, whole[len(ctx):])
        logps.append(lp)
        greedy.append(g)
    assert 0 < sum(greedy) < len(texts)
    path = write_jsonl(tmp_path / "lambada.jsonl", [{"text": t} for t in texts])
    out = tasks.run_task(params, CFG, "lambada", path)
    assert out["n"] == 6 and out["acc"] == pytest.approx(np.mean(greedy))
    assert out["ppl"] == pytest.approx(math.exp(-np.mean(logps)), rel=TOL)


@pytest.mark.parametrize("stride", [BLOCK, 12])
def test_text(model, tmp_path, stride):
    params, hf = model
    enc = gpt_jax.get_tokenizer()
    rng = np.random.default_rng(2)
    text = "\n\n".join(sentence(rng, int(rng.integers(5, 20))) for _ in range(8)) + " héllo ✓"
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    tokens = enc.encode(text)
    total = ref_token_logprobs(hf, BLOCK, tokens, stride).sum()
    out = tasks.run_task(params, CFG, "text", str(path), stride=stride)
    assert out["tokens"] == out["n"] == len(tokens)
    assert out["ppl"] == pytest.approx(math.exp(-total / len(tokens)), rel=TOL)
    assert out["bits_per_byte"] == pytest.approx(
        -total / math.log(2) / len(text.encode("utf-8")), rel=TOL)


def bad(tmp_path, task, content, match, **kw):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    params = reference_pair(CFG)[0]
    with pytest.raises(UserError, match=match) as e:
        tasks.run_task(params, CFG, task, str(path), **kw)
    assert "\n" not in str(e.value)


GOOD_HS = json.dumps({"ctx": "a b", "endings": ["c", "d", "e", "f"], "label": 1})


@pytest.mark.parametrize("task,content,match", [
    ("hellaswag", "", "is empty"),
    ("hellaswag", "\n  \n", "is empty"),
    ("hellaswag", GOOD_HS + "\n" + GOOD_HS + "\n{not json\n", "line 3: not valid JSON"),
    ("hellaswag", "[1, 2]\n", "line 1: expected a JSON object"),
    ("hellaswag", json.dumps({"ctx": "a", "label": 0}) + "\n",
     r"line 1: missing field\(s\) endings"),
    ("hellaswag", GOOD_HS + "\n" + json.dumps({"ctx": "a", "endings": ["b", "c"], "label": 2}),
     "line 2: label 2 is out of range: it must be an ending's index, 0 to 1"),
    ("hellaswag", json.dumps({"ctx": "a", "endings": ["b", "c"], "label": -1}), "out of range"),
    ("hellaswag", json.dumps({"ctx": "a", "endings": ["b", "c"], "label": "x"}),
     "label 'x' must be an integer"),
    ("hellaswag", json.dumps({"ctx": "a", "endings": ["b", "c"], "label": 0.5}),
     "label 0.5 must be an integer, an ending's index 0 to 1"),
    ("hellaswag", json.dumps({"ctx": "a", "endings": ["b", "c"], "label": 2.0}),
     "label 2.0 is out of range"),
    ("hellaswag", json.dumps({"ctx": "a", "endings": "bc", "label": 0}), "endings must be a list"),
    ("hellaswag", json.dumps({"ctx": 3, "endings": ["b", "c"], "label": 0}),
     "ctx must be a string"),
    ("hellaswag", json.dumps({"ctx": "a", "endings": ["b", "word " * 40], "label": 0}),
     "line 1: ending 1 is 41 tokens, longer than the model's block_size 32"),
    ("lambada", json.dumps({"txt": "a b"}), r"missing field\(s\) text"),
    ("lambada", json.dumps({"text": "nospace"}), "line 1: the text has no space"),
    ("lambada", json.dumps({"text": "a " + "xq" * 100}), "the last word is .* tokens, longer"),
])
def test_bad_data(tmp_path, task, content, match):
    bad(tmp_path, task, content, match)


def test_an_integral_float_label_is_its_index(tmp_path):
    """"label": 1.0 (as some JSON writers give an int) was called out of range."""
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps({"ctx": "a b", "endings": ["c", "d", "e"], "label": 1.0}) + "\n")
    assert tasks.hellaswag_requests(str(path), CFG)[1] == [1]


def test_bad_files_and_arguments(tmp_path):
    params = reference_pair(CFG)[0]
    with pytest.raises(DataError, match="does not exist: pass --data"):
        tasks.run_task(params, CFG, "lambada", str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="is a directory"):
        tasks.run_task(params, CFG, "text", str(tmp_path))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(DataError, match="is not UTF-8"):
        tasks.run_task(params, CFG, "text", str(tmp_path / "bin.txt"))
    with pytest.raises(UserError, match="unknown task"):
        tasks.run_task(params, CFG, "mmlu", "x")
    with pytest.raises(UserError, match="stride applies to the text task only"):
        tasks.run_task(params, CFG, "lambada", "x", stride=4)
    with pytest.raises(UserError, match="limit must be a positive integer"):
        tasks.run_task(params, CFG, "lambada", "x", limit=0)


def test_offline_download_says_pass_data(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_JAX_CACHE", str(tmp_path / "cache"))
    # A closed local port: refused at once, like a machine with no network.
    monkeypatch.setitem(tasks.SOURCES, "lambada", ("l.jsonl", "http://127.0.0.1:9/l.jsonl"))
    with pytest.raises(DataError, match=r"cannot download the lambada data .*pass --data PATH"):
        tasks.default_data("lambada")
    assert not list((tmp_path / "cache").iterdir())     # no partial file left behind
    (tmp_path / "cache" / "l.jsonl").write_text('{"text": "a b"}\n')
    assert tasks.default_data("lambada") == str(tmp_path / "cache" / "l.jsonl")


def test_references_apply_only_to_the_standard_data():
    assert tasks.reference("gpt2", {"task": "hellaswag", "n": 10042}) == \
        {"acc": 0.2859, "acc_norm": 0.2955}
    assert tasks.reference("openai-community/gpt2-xl", {"task": "hellaswag", "n": 10042}) == \
        {"acc": 0.3842, "acc_norm": 0.4893}
    assert tasks.reference("gpt2", {"task": "lambada", "n": 5153}) == {"acc": 0.3256, "ppl": 40.06}
    assert tasks.reference("gpt2", {"task": "lambada", "n": 100}) == {}        # --limit
    assert tasks.reference("out", {"task": "lambada", "n": 5153}) == {}        # not released
    text = {"task": "text", "n": 1}
    assert tasks.reference("gpt2-large", text, stride=512, default_data=True) == {"ppl": 16.44}
    assert tasks.reference("gpt2-large", text, stride=1024, default_data=True) == {}
    assert tasks.reference("gpt2-large", text, stride=512, default_data=False) == {}
    table = tasks.format_table({"task": "lambada", "n": 5153, "acc": 0.3, "ppl": 41.0},
                               {"acc": 0.3256, "ppl": 40.06})
    assert table.splitlines()[2].split() == ["lambada", "ppl", "41.0000", "5153", "40.0600"]
