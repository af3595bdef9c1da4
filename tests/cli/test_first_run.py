"""The first run ends on samples that look like the built-in corpus (issue 16).

A short training on the built-in corpus, sampled with sample.py's defaults, is judged by
gpt_jax.data.textstats: how many words, how many of them are the corpus's words, and how much of
the text is whitespace. The default run's own figures are in docs/training.md ("The default
run"); a run of seconds meets looser thresholds, which an untrained model fails.
"""
import jax
import numpy as np
import pytest

import gpt_jax.cli.sample as sample
from gpt_jax import generate, get_tokenizer, init_params, load_checkpoint
from gpt_jax.data.format import load_split
from gpt_jax.data.textstats import CorpusStats, nonblank, sample_figures, whitespace_share
from gpt_jax.model.tokenizer import EOT_TOKEN
from gpt_jax.train.config import TrainConfig
from gpt_jax.train.trainer import Trainer

# Seconds of training: the default run's recipe (warm-up, cosine decay) on a narrow model with
# half the default's batch, whose 50257 x 32 head costs a quarter of the default's per token.
SHORT = dict(n_layer=2, n_head=2, n_embd=32, block_size=256, batch_size=2, max_iters=150,
             learning_rate=1e-2, min_lr=1e-3, warmup_iters=10, lr_decay_iters=150,
             eval_interval=150, eval_iters=1, log_interval=50)


def default_samples(params, cfg) -> list[str]:
    """What `python sample.py` prints for these weights (its default flags), one per sample."""
    args = sample.parse_args([])
    enc = get_tokenizer()
    ids = enc.encode(args.start)
    new = generate(params, cfg, [ids] * args.num_samples, args.max_new_tokens,
                   key=jax.random.key(args.seed), temperature=args.temperature,
                   top_k=args.top_k or None, top_p=args.top_p if args.top_p < 1 else None)
    return [enc.decode(ids + row) for row in np.asarray(new).tolist()]


@pytest.fixture(scope="module")
def corpus(builtin_data):
    return CorpusStats.from_text(get_tokenizer().decode(load_split(builtin_data, "train").tolist()))


def assert_looks_like_corpus(figs):
    # issue 16 asks the default run for 150 words, 70% of them the corpus's, and whitespace at
    # most 10 points above the corpus's. A run of seconds gets looser bars: it knows fewer
    # words and writes shorter lines (more line breaks: 24-26% whitespace against the
    # corpus's 15.5% on AVX2 and AVX-512 alike), where the failure this guards against, runs
    # of indentation, is 80-90% whitespace.
    assert figs["words"] >= 150, figs
    assert figs["in_corpus"] >= 0.5, figs
    assert figs["whitespace"] <= figs["corpus_whitespace"] + 0.15, figs


def test_short_run_samples_look_like_the_corpus(builtin_data, corpus, tmp_path):
    tc = TrainConfig.from_dict({**SHORT, "data": builtin_data, "out_dir": str(tmp_path)})
    Trainer(tc, progress=False, log=lambda *a, **k: None).fit()
    figs = sample_figures(default_samples(*load_checkpoint(str(tmp_path))), corpus)
    print(figs)
    assert_looks_like_corpus(figs)


def test_untrained_model_fails_the_yardstick(corpus):
    """The thresholds above can fail: random weights emit GPT-2's whole vocabulary."""
    cfg = TrainConfig.from_dict(SHORT).model
    figs = sample_figures(default_samples(init_params(cfg, jax.random.key(0)), cfg), corpus)
    with pytest.raises(AssertionError):
        assert_looks_like_corpus(figs)
    assert figs["in_corpus"] < 0.3, figs


def test_figures():
    corpus = CorpusStats.from_text(f"Return the  value.\n\n   \nof x{EOT_TOKEN}y")
    assert corpus.words == {"Return", "the", "value.", "of", "x", "y"}
    # non-blank text: "Return the  value.\nof x\ny" (4 spaces, 2 line breaks, 25 characters)
    assert corpus.whitespace == pytest.approx(6 / 25)
    assert nonblank("a\n  \n\nb ") == "a\nb "
    assert whitespace_share("") == 0.0
    figs = sample_figures(["\nthe value of z,\n\n", "        #\n   \n", "x"], corpus)
    # words: the, value, of, "z,", # and x; value, "z," and # are not the corpus's words
    assert figs["words"] == 6 and figs["in_corpus"] == pytest.approx(3 / 6)
    joined = "the value of z,\n        #\nx"
    assert figs["whitespace"] == pytest.approx(sum(c.isspace() for c in joined) / len(joined))
    # the complaint: runs of indentation are far above the corpus's whitespace
    figs = sample_figures([" " * 40 + "def\n" + " " * 30 + "#"], corpus)
    assert figs["words"] == 2 and figs["whitespace"] > 0.9
    assert sample_figures([""], corpus)["in_corpus"] == 0.0
    # samples of the old default's kind (84-90% whitespace) fail on whitespace alone
    with pytest.raises(AssertionError):
        assert_looks_like_corpus({"words": 300, "in_corpus": 0.9, "whitespace": 0.84,
                                  "corpus_whitespace": 0.155})
