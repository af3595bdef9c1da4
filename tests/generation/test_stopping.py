"""gpt_jax.generation.stopping: stop strings matched in the loop as transformers' StopStringCriteria does
(a stop split over tokens, overlapping stops, a stop ending inside a token), generate(stop=...)
equal to transformers' generate(stop_strings=...), the loop's early exit, and the host-side cut
of text and streams."""
import jax.numpy as jnp
import numpy as np
import pytest

import gpt_jax
import gpt_jax.generation as generation
import gpt_jax.generation.stopping as stopping
from gpt_jax.model.tokenizer import bpe_files, get_tokenizer

from generation_reference import CFG, prompts_of, random_params

torch = pytest.importorskip("torch", reason="needs torch (pip install .[test])")
transformers = pytest.importorskip("transformers", reason="needs transformers (.[test])")


@pytest.fixture(scope="module")
def hf_tokenizer():
    """transformers' GPT-2 tokenizer over the same local BPE files (transformers 5 builds an
    empty one from vocab/merges files: see docs/design.md)."""
    from tokenizers import ByteLevelBPETokenizer
    vocab_bpe, encoder_json = bpe_files()
    eot = "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=ByteLevelBPETokenizer(encoder_json, vocab_bpe),
        bos_token=eot, eos_token=eot, unk_token=eot)


CASES = [  # (stops, texts): every prefix of each text's tokens is checked
    (("Question:", "\n\n"), ["The answer is 4.\n\nQuestion: why?", "Questionable\n\n\nthing",
                             "a\n\nb", "Q: x\nQuestion :no\n\nQuestion:"]),
    (("aa", "aaa", "baab"), ["baaab xaa aaaa baab", "aabaab", "ba ab aab"]),   # overlapping
    (("end", " the end"), ["endless ending the end, extend", "weekend theend"]),  # inside tokens
    (("\n",), ["line one\nline two", "\n\n\n\n"]),                              # one byte
]


@pytest.mark.parametrize("stops,texts", CASES)
def test_stop_matched_equals_transformers_stop_string_criteria(hf_tokenizer, stops, texts):
    from transformers.generation.stopping_criteria import StopStringCriteria
    enc = get_tokenizer()
    tables = stopping.stop_tables(stops, enc, enc.n_vocab)
    V, W = enc.n_vocab, tables.window
    criteria = StopStringCriteria(hf_tokenizer, list(stops))
    check = lambda tails: np.asarray(stopping.stop_matched(stopping.as_arrays(tables),
                                                           jnp.asarray(tails)))
    hits = 0
    for text in texts:
        ids = enc.encode(text)
        tails, refs = [], []
        for k in range(1, len(ids) + 1):
            window = ([V] * W + ids[:k])[-W:]
            tails.append(window)
            refs.append(bool(criteria(torch.tensor([ids[:k]]), None)[0]))
        ours = check(np.array(tails, np.int32))
        np.testing.assert_array_equal(ours, refs, err_msg=f"{text!r} {stops}")
        hits += sum(refs)
    assert hits >= len(texts)          # every text ends some stop at least once


def test_generate_with_stop_strings_equals_transformers(hf_tokenizer):
    """Greedy with stop strings on 20 prompts: the tokens of transformers' generate with
    stop_strings, the rows that stop padded; the loop exits once all rows are done."""
    from gpt_jax.checkpoint.hf import to_transformers
    torch.set_num_threads(1)
    params = random_params(CFG, seed=21, std=0.3)
    hf = to_transformers(params, CFG).eval()
    enc = get_tokenizer()
    lengths = [1, 3, 5, 7, 2, 9, 11, 4, 13, 6, 15, 8, 3, 10, 12, 1, 14, 5, 16, 7]
    prompts = prompts_of(lengths, CFG.vocab_size, seed=3)
    N = 16
    free = np.asarray(generation.generate(params, CFG, prompts, N, temperature=0))
    # stops the model makes (whole UTF-8 text: ids 94..127 are single high bytes): two-token
    # strings from three rows, one byte from a fourth
    def text(ids):
        try:
            return enc.decode_bytes(list(map(int, ids))).decode("utf-8")
        except UnicodeDecodeError:
            return None
    pairs = [t for b in range(len(prompts)) for t in [text(free[b, 3 + b % 5:5 + b % 5])] if t]
    single = [t for t in (text([x]) for x in free[:, 2]) if t]
    stops = pairs[:3] + single[:1]
    assert len(stops) == 4
    ours = np.asarray(generation.generate(params, CFG, prompts, N, temperature=0, stop=stops,
                                          pad_id=0))
    stopped = 0
    for b, p in enumerate(prompts):
        ids = torch.tensor([list(map(int, p))])
        with torch.inference_mode():
            ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N,
                              do_sample=False, stop_strings=stops, tokenizer=hf_tokenizer,
                              pad_token_id=0)[0, ids.shape[1]:].numpy()
        n = len(ref)
        np.testing.assert_array_equal(ours[b, :n], ref, err_msg=f"row {b}")
        np.testing.assert_array_equal(ours[b, :n], free[b, :n])
        assert (ours[b, n:] == 0).all()
        stopped += n < N
    assert stopped >= 3


def test_early_exit_ends_the_loop_when_every_row_has_stopped():
    """The streamed loop reports each step it runs: a batch whose rows all hit eos within a
    few steps runs those steps, not max_new_tokens."""
    params = random_params(CFG, seed=6)
    prompts = [[5, 9, 2]] * 2 + [[7]]
    free = np.asarray(generation.generate(params, CFG, prompts, 40, temperature=0))
    eos = int(free[0, 2])
    last = max(int(np.flatnonzero(r == eos)[0]) if (r == eos).any() else 39 for r in free)
    steps = [p.step for p in gpt_jax.generate_stream(params, CFG, prompts, 40, temperature=0,
                                                      eos_id=eos)]
    assert steps == list(range(last + 1)) and last < 39
    out = np.asarray(generation.generate(params, CFG, prompts, 40, temperature=0, eos_id=eos))
    for r, f in zip(out, free):
        k = np.flatnonzero(f == eos)[0] if (f == eos).any() else 40
        np.testing.assert_array_equal(r[:k + 1], f[:k + 1])
        assert (r[k:] == eos).all()


def test_cut_text_and_stream_pieces_join_to_the_cut_text():
    rng = np.random.default_rng(0)
    stops = ("\n\n", "Question:", "é!")
    for text in ["abc\n\ndef", "no stop here", "Quest Question: x", "café! cafés", "a\n\n",
                 "ééé Questio"]:
        want = stopping.cut_text(text, stops)
        data = text.encode("utf-8")
        for _ in range(5):   # random splits into byte chunks, characters split too
            cuts = sorted(rng.choice(np.arange(1, len(data)), size=min(3, len(data) - 1),
                                     replace=False)) if len(data) > 1 else []
            chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
            stream = stopping.StopTextStream(stops)
            pieces = [stream.feed(c) for c in chunks] + [stream.finish()]
            assert "".join(pieces) == want, (text, chunks, pieces)
            assert not any("\ufffd" in p for p in pieces)
    assert stopping.cut_text("a\n\nQuestion:", stops) == "a"
