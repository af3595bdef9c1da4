"""Generation settings at their edges (issues 30-32): each is one UserError line before
anything is compiled or allocated, or, where the setting is meaningful, it simply works."""
import numpy as np
import pytest

import gpt_jax
import gpt_jax.generation as generation
import gpt_jax.generation.memory as memory
import gpt_jax.generation.stopping as stopping
from gpt_jax.errors import DecodeMemoryError, UserError

from generation_reference import CFG, random_params

_P = []


def params():
    if not _P:
        _P.append(random_params(CFG, seed=3))
    return _P[0]


def no_decode(monkeypatch):
    monkeypatch.setattr(generation.DECODER, "run", lambda *a, **k: pytest.fail("compiled"))


def one_line(e) -> str:
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg, msg
    return msg


def test_an_ngram_size_no_row_can_reach_bans_nothing():
    """no_repeat_ngram_size 10**9 was a lax.dynamic_slice TypeError from inside JAX: an n-gram
    longer than prompt + max_new_tokens can never repeat, so it is off (transformers bans
    nothing either); the longest size a row can reach still compiles and runs."""
    prompts, N = [[1, 2, 3], [4, 5]], 6
    off = np.asarray(generation.generate(params(), CFG, prompts, N, temperature=0))
    for n in (10 ** 9, 3 + N + 1, 3 + N):
        got = generation.generate(params(), CFG, prompts, N, temperature=0,
                                  no_repeat_ngram_size=n)
        np.testing.assert_array_equal(np.asarray(got), off)


def test_a_stop_string_that_is_not_text_is_one_line(monkeypatch):
    """A lone surrogate (a non-UTF-8 byte of a command line, as Python keeps it) raised
    UnicodeEncodeError while building the stop tables."""
    no_decode(monkeypatch)
    with pytest.raises(UserError) as e:
        generation.generate(params(), CFG, [[1]], 4, stop=["ok", "a\udcff"])
    assert "not valid text" in one_line(e) and "UTF-8" in str(e.value)


@pytest.mark.parametrize("text", ["yes", "false", 1, None])
def test_stream_text_takes_booleans_only(text):
    with pytest.raises(UserError, match="text must be True or False") as e:
        next(gpt_jax.generate_stream(params(), CFG, [[1]], 4, text=text))
    one_line(e)


def test_stop_tables_too_large_are_refused_before_they_are_built(monkeypatch):
    """A 100,000-character stop asked for 18.7 GiB of tables (one entry per place a token
    fits). With 200 MiB free: refused in one line naming the longest stop that fits whatever
    its text, and a stop of that length (all one letter: near the worst case) is built."""
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 200 << 20)
    enc, V = gpt_jax.get_tokenizer(), 50304
    made, full = [], np.full
    monkeypatch.setattr(stopping.np, "full", lambda *a, **k: made.append(a[0]) or full(*a, **k))
    with pytest.raises(DecodeMemoryError) as e:
        stopping.stop_tables(("a" * 100_000,), enc, V)
    msg = one_line(e)
    assert not made                                  # nothing allocated
    assert msg.startswith("the stop string 'aaaaaaaaaaaaaaaaaaaa'... (100,000 bytes) needs ")
    fit = int(msg.split("at most ")[-1].split(" bytes")[0].replace(",", ""))
    assert 100 < fit < 100_000, msg
    stopping.stop_tables(("b" * fit,), enc, V)
    assert made and memory.stop_table_bytes(V, 1, made[0][2], 1) <= 150 << 20
    with pytest.raises(DecodeMemoryError, match="tables and matching"):   # text, not letters
        stopping.stop_tables((("the cat sat on the mat. " * 5000)[:100_000],), enc, V)


def test_a_stop_strings_matching_counts_per_row(monkeypatch):
    """generate() counts each row's stop matching with its KV cache: rows that fit pass,
    one more is refused, naming the count that fits."""
    no_decode(monkeypatch)
    monkeypatch.setattr(memory, "MEMORY_CHECK_ABOVE", 0)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 64 << 20)
    stop = "xy" * 150   # ids 87, 88: within the tiny vocabulary
    tables = stopping.stop_tables((stop,), gpt_jax.get_tokenizer(), CFG.vocab_size)
    P = generation.bucket_length(1, CFG.block_size)
    fit = memory.max_batch(CFG, P, 4, stop=tables)
    assert 1 < fit < memory.max_batch(CFG, P, 4)
    monkeypatch.setattr(generation.DECODER, "run", lambda *a, **k: "ran")
    assert generation.generate(params(), CFG, [[1]] * fit, 4, stop=stop) == "ran"
    with pytest.raises(DecodeMemoryError) as e:
        generation.generate(params(), CFG, [[1]] * (fit + 1), 4, stop=stop)
    assert one_line(e).endswith(f"split the prompts into calls of at most {fit}")
    assert "stop strings would need" in str(e.value)


def test_an_absurd_prompt_count_is_refused_as_a_count(monkeypatch):
    """10**9 prompts said "would need 1,138,992.6 GiB" first: the count is what to change."""
    no_decode(monkeypatch)
    huge = np.broadcast_to(np.ones((1, 4), np.int32), (10 ** 9, 4))
    with pytest.raises(DecodeMemoryError) as e:
        generation.generate(params(), CFG, huge, 8)
    msg = one_line(e)
    assert msg.startswith("1,000,000,000 prompts are more than one call can decode here: "
                          "at most "), msg
    assert "split the prompts into calls of at most" in msg


def test_beam_memory_refusal_names_the_beams_that_fit(monkeypatch):
    """One prompt with 10**8 beams said "for 100000000 prompts ... split the prompts": the
    count is beams, and the fix is fewer of them."""
    monkeypatch.setattr(generation.beam.BEAMS, "run", lambda *a, **k: pytest.fail("compiled"))
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 256 << 20)
    monkeypatch.setattr(memory, "MEMORY_CHECK_ABOVE", 0)
    with pytest.raises(DecodeMemoryError) as e:
        gpt_jax.beam_search(params(), CFG, [[1, 2]], 8, num_beams=10 ** 8)
    msg = one_line(e)
    assert "prompts" not in msg and msg.startswith("num_beams=100000000 is more beams than fit")
    fit = int(msg.split("pass num_beams=")[1].split()[0])
    assert fit > 2
    generation.beam.beam_args(params(), CFG, [[1, 2]], 8, num_beams=fit)       # passes
    with pytest.raises(DecodeMemoryError, match=f"num_beams={fit} or fewer"):
        generation.beam.beam_args(params(), CFG, [[1, 2]], 8, num_beams=fit + 1)
    # many prompts with a few beams: the prompts are what to split
    with pytest.raises(DecodeMemoryError, match="split the prompts into calls of at most"):
        gpt_jax.beam_search(params(), CFG, [[1, 2]] * fit, 8, num_beams=2)
