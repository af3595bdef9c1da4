"""gpt_jax.generate_stream: the tokens of generate() step by step, their log-probs under the
model, text pieces that join to the cut text, and a consumer that leaves ending the decode."""
import threading

import jax
import numpy as np

import gpt_jax
import gpt_jax.generation as generation
import gpt_jax.generation.stopping as stopping

from generation_reference import CFG, LENGTHS, N_NEW, prompts_of, random_params


def test_stream_equals_generate_with_logprobs_and_text():
    params = random_params(CFG, seed=8, std=0.1)
    prompts = prompts_of(LENGTHS, CFG.vocab_size, seed=8)
    kw = dict(temperature=1.3, top_k=50, repetition_penalty=1.2, key=jax.random.key(4))
    new, logits, lps = generation.generate(params, CFG, prompts, N_NEW, return_logits=True,
                                           logprobs=True, **kw)
    new, lps = np.asarray(new), np.asarray(lps)
    want = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, -1)), new[..., None],
                              -1)[..., 0]
    np.testing.assert_allclose(lps, want, atol=1e-5)      # log p under the model itself
    pieces = list(gpt_jax.generate_stream(params, CFG, prompts, N_NEW, logprobs=True,
                                          text=True, **kw))
    assert [p.step for p in pieces] == list(range(N_NEW))
    np.testing.assert_array_equal(np.stack([p.tokens for p in pieces], 1), new)
    np.testing.assert_allclose(np.stack([p.logprobs for p in pieces], 1), lps, atol=1e-6)
    enc = gpt_jax.get_tokenizer()
    for b in range(len(prompts)):
        assert "".join(p.text[b] for p in pieces) == enc.decode(new[b].tolist())


def test_stream_text_stops_at_a_stop_string_and_leaving_ends_the_decode():
    params = random_params(CFG, seed=9, std=0.3)
    prompts = prompts_of([4, 7], CFG.vocab_size, seed=2)
    enc = gpt_jax.get_tokenizer()
    free = np.asarray(generation.generate(params, CFG, prompts, 40, temperature=0))
    stop = enc.decode(free[0, 5:7].tolist())
    pieces = list(gpt_jax.generate_stream(params, CFG, prompts, 40, temperature=0,
                                          stop=[stop], text=True))
    text = "".join(p.text[0] for p in pieces)
    assert text == stopping.cut_text(enc.decode(free[0].tolist()), [stop])
    assert pieces[-1].done.all() or len(pieces) == 40
    # Leave after 3 steps: the worker ends at its next step, not after 40.
    before = threading.active_count()
    stream = gpt_jax.generate_stream(params, CFG, prompts, 40, temperature=0)
    got = [next(stream) for _ in range(3)]
    stream.close()
    assert [p.step for p in got] == [0, 1, 2]
    assert threading.active_count() == before
