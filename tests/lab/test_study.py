"""study.py's experiments at a tiny size, each checking the claim it measures (gpt_jax/lab/study/).

Synthetic token streams stand in for the corpus where a claim needs a known answer: on random
tokens no causal model can beat ln(V), so a loss far below it can only come from reading the
answer."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import init_params
from gpt_jax.lab.study import experiments as ex, report
from gpt_jax.lab.study.runs import train


class Tokens:
    """What BatchSampler reads of a TokenData: the two splits."""

    def __init__(self, train, val):
        self.splits = {"train": np.asarray(train, np.uint16), "val": np.asarray(val, np.uint16)}


def random_tokens(vocab, n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    return Tokens(rng.integers(0, vocab, n), rng.integers(0, vocab, n))


def test_future_tokens_change_no_earlier_logit():
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=128)
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 32), 0, 128)
    key = jax.random.key(2)
    assert ex.future_perturbation(params, cfg, tokens, 16, key) == 0.0
    assert ex.future_perturbation(params, cfg.replace(causal=False), tokens, 16, key) > 1e-3


def test_bidirectional_training_loss_falls_far_below_causal_by_copying():
    V, s = 64, ex.Scale(n_embd=64, n_head=4, n_layer=2, block_size=16, batch_size=8)
    data = random_tokens(V)
    kw = dict(steps=150, lr=3e-3, warmup=5, batch_size=8, eval_iters=0, keep_params=True)
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=16, vocab_size=V)
    causal = train(cfg, data, **kw)
    bi = train(cfg.replace(causal=False), data, **kw)
    floor = math.log(V)   # random tokens: nothing to learn for a causal model
    assert causal.final() > floor - 0.3
    assert bi.final() < floor / 3
    # ... and once the answer is not visible (generation) it is no better than chance
    val = ex.data_val_batch(s, data)
    assert ex.prefix_only_loss(bi.params, bi.cfg, jnp.asarray(val)) > floor - 0.3


def test_divergence_is_detected_and_a_sane_lr_trains(tmp_path):
    """The norm sweep's yardstick: an absurd lr fails (blows up or stalls), a usual one trains;
    for Pre-LN and Post-LN alike at this tiny depth (what the full sweep found is in
    docs/study/report.md)."""
    V = 64
    data = Tokens(np.tile(np.arange(V), 400), np.tile(np.arange(V), 50))   # 0 1 2 ... 63 0 1
    all_runs = []
    for norm in ("pre", "post"):
        cfg = GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=16, vocab_size=V, norm=norm)
        runs = [train(cfg, data, steps=40, lr=lr, warmup=0, batch_size=4, eval_iters=0)
                for lr in (1e-2, 30.0)]
        assert ex.trains(runs[0]), runs[0].losses[::5]
        assert not ex.trains(runs[1]), runs[1].losses[::5]
        assert ex.failing_lr(runs, norm, 4, 0) == (30.0, 1e-2)
        all_runs += runs
    s = ex.Scale(norm_depths=(4,), norm_lrs=(1e-2, 30.0), norm_steps=40, block_size=16)
    report.write(str(tmp_path), s, {"norm": all_runs}, "test")
    text = (tmp_path / "report.md").read_text()
    assert "| 4 | 0 | post | " in text and "| 30 | 0.01 |" in text
    assert (tmp_path / "norm.png").stat().st_size > 1000


def test_cached_decoding_gives_the_recomputed_tokens(tmp_path):
    kv = ex.kv_cache_timing(ex.TINY)
    assert [r["same_tokens"] for r in kv["rows"]] == [True] * len(ex.TINY.kv_lengths)
    assert all(r["cached_s_per_token"] > 0 for r in kv["rows"])
    report.write(str(tmp_path), ex.TINY, {"kv": kv}, "test")
    assert "| True |" in (tmp_path / "report.md").read_text()


def test_strategy_yardsticks():
    assert ex.repetition_rate([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 / 5)  # 1234 again
    assert ex.repetition_rate([1, 2, 3, 4, 5]) == 0.0
    assert ex.distinct_n([[1, 1, 2], [1, 2]], 1) == 2 / 5
    assert ex.distinct_n([[1, 1, 2], [1, 2]], 2) == 2 / 3


@pytest.mark.slow
def test_study_tiny_on_the_corpus_writes_the_report_and_figures(tmp_path, builtin_data):
    """study.py --tiny end to end on the built-in corpus: the default model, untied and
    bidirectional runs, generation strategies (norm and kv: the tests above)."""
    r = run_cli("study.py", "--tiny", "--only", "heads,mask,strategies", "--out_dir", tmp_path,
                timeout=1500)
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "report.md").read_text()
    for section in ("Tied vs untied", "causal mask", "Generation strategies"):
        assert section in text
    for png in ("heads", "mask", "strategies"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000
    assert "at most **0**" in text       # the causal model: future tokens changed nothing
    bad = run_cli("study.py", "--only", "nope")
    assert bad.returncode == 1 and bad.stderr.startswith("error:")


def test_study_flags_and_model_errors_name_study_flags(tmp_path):
    """--only '' ran everything; --model with sections that do not use it was dropped; a
    Hugging Face --model was told to "pass the right --out_dir" and a damaged one to call
    load_checkpoint(..., step=10): each is one line in study.py's own flags, before
    anything trains."""
    import gpt_jax
    from conftest import damage_params_file
    from gpt_jax.cli import study as cli
    from gpt_jax.errors import UserError

    def error(*argv):
        with pytest.raises(UserError) as e:
            cli.main(["--tiny", "--out_dir", str(tmp_path / "o"), *argv])
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error("--only", "").startswith("--only takes a comma-separated subset of norm, "
                                          "heads, mask, strategies, kv; got no section")
    assert error("--only", "heads,kv", "--model", "out").startswith(
        "--model is the model of the strategies section, which --only heads,kv leaves out")
    assert error("--step", "3").startswith("--step picks a checkpoint of --model OUT_DIR")
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=512)
    params = init_params(cfg, jax.random.key(0))
    hf = str(tmp_path / "hf")
    gpt_jax.to_hf(params, cfg, hf)
    assert error("--model", hf, "--step", "3") == (
        f"--model {hf}: --step 3 applies to a train.py out_dir (it picks one of its "
        f"checkpoints), and {hf} is a Hugging Face directory, which loads without it: drop "
        f"--step 3")
    seen = {}   # a Hugging Face --model loads (it was "pass the right --out_dir"), up front
    monkey = pytest.MonkeyPatch()
    monkey.setattr(cli, "run_study", lambda *a, **k: seen.update(k))
    try:
        assert cli.main(["--tiny", "--model", hf, "--only", "strategies,kv"]) == 0
    finally:
        monkey.undo()
    assert seen["model"][1] == cfg and seen["only"] == ["strategies", "kv"]
    run = str(tmp_path / "run")
    for step in (5, 10):
        gpt_jax.save_checkpoint(run, step, params, cfg)
    damage_params_file(run, 10)
    msg = error("--model", run, "--only", "strategies")
    assert msg.startswith(f"--model {run}: checkpoint step 10 in ") and \
        msg.endswith("intact steps: 5 (pass --step 5)"), msg
    assert error("--model", str(tmp_path / "nothing")).startswith(
        f"--model {tmp_path / 'nothing'}: no directory")


def test_ctrl_c_in_the_norm_sweep_keeps_the_runs_that_ended_and_exits_130(tmp_path,
                                                                          builtin_data):
    """Ctrl-C during study.py's norm sweep printed "interrupted" and then segfaulted in 2 of 3
    runs (the interpreter's teardown under XLA's threads). A real SIGINT once a norm run has
    ended: exit 130, one last line naming what was kept, the report of the runs that ended."""
    import re
    from signals import Watched
    with Watched("study.py", "--tiny", "--only", "norm", "--out_dir", tmp_path) as w:
        w.wait_for(lambda w: b"post-LN" in w.err)   # the second norm run: the first has ended
        took = w.stop(timeout=60)
    text = w.err.decode()
    assert w.proc.returncode == 130, text[-2000:]
    assert took < 20, f"{took:.1f} s"
    lines = w.lines()
    assert re.fullmatch(rf"study.py stopped by SIGINT: kept \d+ norm runs? in "
                        rf"{re.escape(str(tmp_path / 'report.md'))}", lines[-1]), lines[-1]
    assert "Traceback" not in text and "interrupted" not in text
    report_md = (tmp_path / "report.md").read_text()
    assert "unfinished" in report_md and "| 2 | 0 | pre | " in report_md


def test_an_out_dir_study_py_cannot_write_is_one_line_before_anything_trains(tmp_path):
    """--out_dir that is a file, under a file, or read-only (issue 30 item 6): one line naming
    --out_dir, exit 1, before the first training step."""
    import subprocess
    import sys
    from conftest import ROOT, run_cli
    from file_modes import without_file_override
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        r = run_cli("study.py", "--tiny", "--only", "kv", "--out_dir", out, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"error: --out_dir {out} is ") and "training" not in r.stdout
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    r = subprocess.run([*without_file_override(), sys.executable, "study.py", "--tiny", "--only",
                        "kv", "--out_dir", str(ro / "report")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "is not a writable directory (Permission denied)" in lines[0]
