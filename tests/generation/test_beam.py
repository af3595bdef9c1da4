"""gpt_jax.generation.beam: beam search token for token as transformers' GPT2LMHeadModel.generate(num_beams=
...) with the same weights (every tensor random), on 20 prompts of unequal length decoded as one
batch; generate()'s num_beams hook; one program per shape; bad settings as one-line UserErrors.

Our logits and transformers' differ by float32 rounding (~1e-6), so a choice between two beams
whose scores are closer than that may go either way on either side. The search reports, per
prompt, the smallest score gap any of its choices turned on; prompts with one under 1e-4 (1 to 3
of the 20 per setting here) are left out of the comparison, and at least 16 must remain."""
import numpy as np
import pytest

import gpt_jax
import gpt_jax.generation.beam as beam
from gpt_jax.errors import UserError
from gpt_jax.checkpoint.hf import to_transformers

from generation_reference import prompts_of, tiny
from scoring_reference import random_params

torch = pytest.importorskip("torch", reason="needs torch (pip install .[test])")
pytest.importorskip("transformers", reason="needs transformers (pip install .[test])")

CFG = tiny()
PARAMS = random_params(CFG, seed=1)
PROMPTS = prompts_of(np.random.default_rng(0).integers(1, 30, 20), CFG.vocab_size, seed=2)
N = 12
NB = 4
SHORT = 14  # a 29-token prompt whose search ends after 3 steps with most EOS settings
# One compiled shape (num_beams 4, all 4 returned) for every setting: they are runtime values.
SETTINGS = [dict(num_beams=NB, num_return_sequences=NB, length_penalty=lp, early_stopping=es,
                 eos=eos)
            for lp, es, eos in [(1.0, False, None), (1.0, False, "common"), (2.0, True, "common"),
                                (0.5, "never", "common"), (-1.0, True, "common")]]


def eos_of(setting):
    """An EOS that beams actually end on: the token most often chosen at steps 2-6 without one
    (a fixed choice: it depends on the params and prompts only)."""
    if setting["eos"] is None:
        return None
    free, _ = beam.beam_search(PARAMS, CFG, PROMPTS, N, num_beams=NB, num_return_sequences=NB)
    return int(np.bincount(np.asarray(free)[:, 2:7].ravel()).argmax())


def hf_beams(model, prompts, eos, **kw):
    """transformers' beam search for the prompts as one left-padded batch (with its attention
    mask, from which transformers derives the positions): new tokens padded to N with the fill
    transformers uses (pad_token_id, here eos), and sequences_scores."""
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (L - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=N, do_sample=False,
                         eos_token_id=eos, pad_token_id=eos, return_dict_in_generate=True,
                         output_scores=True, **kw)
    new = out.sequences[:, L:].numpy()
    new = np.pad(new, ((0, 0), (0, N - new.shape[1])), constant_values=-1 if eos is None else eos)
    return new, out.sequences_scores.numpy()


def test_beam_search_matches_transformers():
    model = to_transformers(PARAMS, CFG)
    ended_early = stopped_early = 0
    results = []
    for setting in SETTINGS:
        kw = {k: v for k, v in setting.items() if k != "eos"}
        eos = eos_of(setting)
        args, static = beam.beam_args(PARAMS, CFG, PROMPTS, N, eos_id=eos, **kw)
        tokens, scores, steps, gaps = (np.asarray(x) for x in beam.BEAMS.run(*args, **static))
        results.append(tokens)
        ref, ref_scores = hf_beams(model, PROMPTS, eos, **kw)
        clear = np.flatnonzero(gaps > 1e-4)
        assert len(clear) >= 16, (setting, gaps)
        for b in clear:
            rows = slice(b * NB, (b + 1) * NB)
            np.testing.assert_array_equal(tokens[rows], ref[rows], err_msg=f"{setting} prompt {b}")
            # float32 sums: within 1e-5, or 1e-6 relative for the large scores a negative
            # length_penalty makes (-500 is 6e-5 apart from its float32 neighbours)
            np.testing.assert_allclose(scores[rows], ref_scores[rows], rtol=1e-6, atol=1e-5,
                                       err_msg=f"{setting} prompt {b}")
        if eos is not None:
            ended_early += int((tokens[:, :-1] == eos).any(axis=1).sum())
        # The loop's early exit: a batch of one prompt whose search ends early (the same
        # program: its bucket is 32 too) stops there, with transformers' answer.
        args, static = beam.beam_args(PARAMS, CFG, [PROMPTS[SHORT]] * len(PROMPTS), N,
                                      eos_id=eos, **kw)
        alone, _, steps, gaps = (np.asarray(x) for x in beam.BEAMS.run(*args, **static))
        if gaps[0] > 1e-4:
            np.testing.assert_array_equal(alone[:NB], ref[SHORT * NB:(SHORT + 1) * NB])
        stopped_early += int(steps < N)
    # The settings were exercised: hypotheses that ended on EOS, searches that stopped before
    # N steps, and settings that change the answer.
    assert ended_early > 20 and stopped_early >= 3
    assert len({r.tobytes() for r in results}) >= 4


def test_generate_num_beams_and_one_program_per_shape():
    eos = eos_of(SETTINGS[1])
    want, _ = beam.beam_search(PARAMS, CFG, PROMPTS, N, num_beams=NB, num_return_sequences=NB,
                               eos_id=eos)
    n = beam.BEAMS.trace_count
    got = gpt_jax.generate(PARAMS, CFG, PROMPTS, N, temperature=0, num_beams=NB,
                           num_return_sequences=NB, eos_id=eos)
    np.testing.assert_array_equal(got, want)
    # other prompts in the same bucket (17..32 tokens), penalties, stopping rules and EOS ids
    for i, es in enumerate([True, "never", False]):
        other = prompts_of([17 + i, 3, 30 - i] + [5] * 17, CFG.vocab_size, seed=10 + i)
        gpt_jax.beam_search(PARAMS, CFG, other, N, num_beams=NB, num_return_sequences=NB,
                            length_penalty=0.3 * i - 0.2, early_stopping=es, eos_id=i)
    assert beam.BEAMS.trace_count == n
    # beams of the best first: the top hypothesis alone is the first of the four
    top = gpt_jax.generate(PARAMS, CFG, PROMPTS, N, temperature=0, num_beams=NB, eos_id=eos)
    np.testing.assert_array_equal(top, np.asarray(want)[::NB])
    assert beam.BEAMS.trace_count == n + 1


@pytest.mark.parametrize("kw, says", [
    (dict(num_beams=0), "num_beams must be a positive integer"),
    (dict(num_beams=2.5), "num_beams must be a positive integer"),
    (dict(num_beams=True), "num_beams must be a positive integer"),
    (dict(num_beams=2, num_return_sequences=3), "must be at most num_beams (2)"),
    (dict(num_beams=2, num_return_sequences=0),
     "num_return_sequences must be a positive integer"),
    (dict(num_beams=2, length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(num_beams=2, length_penalty=float("inf")), "length_penalty must be a finite number"),
    (dict(num_beams=2, length_penalty="1"), "length_penalty must be a finite number"),
    (dict(num_beams=2, length_penalty=1e4), "too large in magnitude"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping must be True, False or"),
    (dict(num_beams=2, temperature=0.7), "does not sample: pass temperature=0"),
    (dict(num_beams=2, temperature=0, top_k=5), "does not sample"),
    (dict(num_beams=2, temperature=0, return_logits=True), "return_logits is not supported"),
    (dict(num_beams=1, temperature=0, length_penalty=2.0), "pass num_beams > 1"),
    (dict(num_beams=1, num_return_sequences=2), "must be at most num_beams (1)"),
])
def test_bad_beam_settings_are_one_line_user_errors(kw, says):
    n = beam.BEAMS.trace_count
    kw = {"temperature": 0, **kw}
    with pytest.raises(UserError) as e:
        gpt_jax.generate(PARAMS, CFG, PROMPTS[:2], 4, **kw)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert beam.BEAMS.trace_count == n
