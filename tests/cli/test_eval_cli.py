"""eval.py end to end on a small checkpoint: the results table, --json keys and values (those of
gpt_jax.evaluation.tasks.run_task, which tests/evaluation/test_tasks.py checks against transformers), one-line errors."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

import gpt_jax
import gpt_jax.evaluation.tasks as tasks
from gpt_jax.errors import UserError

from scoring_reference import random_params

CFG = gpt_jax.GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50304)
HS_ROWS = [{"ctx": "the cat sat", "endings": ["on the mat", "far away", "in a box", "x"],
            "label": 0},
           {"ctx": "dogs ran", "endings": ["home", "into the deep woods", "away", "back"],
            "label": 3},
           {"ctx": "a b c d", "endings": ["e", "f g", "h i j", "k"], "label": 2}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    params = random_params(CFG, seed=5)
    gpt_jax.save_checkpoint(str(d / "out"), 3, params, CFG)
    (d / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HS_ROWS))
    (d / "lambada.jsonl").write_text('{"text": "the cat sat on the mat"}\n'
                                     '{"text": "dogs ran far away into the woods"}\n')
    (d / "text.txt").write_text("the cat sat on the mat, and the dogs ran far away. " * 5)
    return d, params


def run_eval(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "eval.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def eval_main():
    import gpt_jax.cli.eval as eval_cli
    return eval_cli.main


def test_hellaswag_table_and_json(setup):
    d, params = setup
    r = run_eval("--init_from", d / "out", "--task", "hellaswag", "--data", d / "hs.jsonl",
                 "--json", d / "hs.json", "--batch_size", "5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["task", "metric", "value", "n", "reference"]
    assert [l.split()[:2] for l in lines[1:]] == [["hellaswag", "acc"], ["hellaswag", "acc_norm"]]
    assert "examples/s" in r.stderr
    got = json.loads((d / "hs.json").read_text())
    assert list(got) == ["task", "n", "acc", "acc_norm"]
    want = tasks.run_task(params, CFG, "hellaswag", str(d / "hs.jsonl"))
    assert got == {k: pytest.approx(want[k]) if k != "task" else want[k] for k in got}


@pytest.mark.parametrize("task,data,extra,keys", [
    ("lambada", "lambada.jsonl", [], ["task", "n", "acc", "ppl"]),
    ("text", "text.txt", ["--stride", "8"], ["task", "n", "tokens", "ppl", "bits_per_byte"]),
])
def test_json_keys(setup, capsys, task, data, extra, keys):
    d, params = setup
    eval_main()(["--init_from", str(d / "out"), "--task", task, "--data", str(d / data),
                 "--json", str(d / f"{task}.json"), *extra])
    got = json.loads((d / f"{task}.json").read_text())
    assert list(got) == keys and got["task"] == task
    stride = {"stride": 8} if task == "text" else {}
    want = tasks.run_task(params, CFG, task, str(d / data), **stride)
    for k in keys[1:]:
        assert got[k] == pytest.approx(want[k])
    assert capsys.readouterr().out.startswith("task ")


@pytest.mark.parametrize("args,match", [
    ([], "give exactly one of --task and --harness"),
    (["--task", "lambada", "--harness", "x"], "give exactly one of --task and --harness"),
    (["--task", "mmlu"], "invalid choice"),
    (["--task", "lambada", "--stride", "4"], "--stride applies to --task text only"),
    (["--task", "text", "--stride", "0"], "--stride must be at least 1"),
    (["--task", "text", "--limit", "-1"], "--limit must be at least 1"),
    (["--harness", "x", "--data", "f"], "--data and --stride apply to --task"),
    (["--task", "text", "--include_path", "d"], "--include_path applies to --harness"),
])
def test_bad_flags(args, match):
    with pytest.raises(UserError, match=match):
        eval_main()(args)


def test_stride_above_block_size(setup):
    d, _ = setup
    with pytest.raises(UserError, match="--stride must be at most the model's block_size 32"):
        eval_main()(["--init_from", str(d / "out"), "--task", "text", "--stride", "33",
                     "--data", str(d / "text.txt")])


def test_bad_data_is_one_line_and_exit_1(setup):
    d, _ = setup
    (d / "broken.jsonl").write_text(json.dumps(HS_ROWS[0]) + "\n{oops\n")
    r = run_eval("--init_from", d / "out", "--task", "hellaswag", "--data", d / "broken.jsonl")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "broken.jsonl line 2: not valid JSON" in lines[-1]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_harness_without_lm_eval_says_how_to_install(setup):
    d, _ = setup
    code = ("import sys, runpy; sys.modules['lm_eval'] = None; "
            f"sys.argv = ['eval.py', '--harness', 'lambada_openai', '--init_from', {str(d)!r}]; "
            "runpy.run_path('eval.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT},
                       timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == ("error: --harness needs lm-evaluation-harness: "
                                "pip install 'gpt-jax[eval]'")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_scoring_at_once_with_one_line(setup, tmp_path, sig):
    """Ctrl-C during eval.py (text, stride 1) was swallowed inside JAX's callbacks and scoring
    went on for over a minute (or the exit segfaulted); SIGTERM ended it without a word. A real
    process and a real signal, sent once scoring runs: it ends within seconds, in one line."""
    import re
    import signal
    from signals import Watched
    d, _ = setup
    text = tmp_path / "long.txt"
    text.write_text("the cat sat on the mat, and the dogs ran far away. " * 4000)  # ~52k windows
    with Watched("eval.py", "--init_from", d / "out", "--task", "text", "--data", text,
                 "--stride", "1") as w:
        w.wait_for(lambda w: re.search(rb"[1-9]\d*/\d+ \[", w.err))   # the bar counted a batch
        seen = len(w.err)
        took = w.stop(getattr(signal, sig), timeout=30)
    assert w.proc.returncode == 128 + getattr(signal, sig), w.err.decode()[-2000:]
    assert took < 5, f"{took:.1f} s after {sig}"
    lines = w.lines(seen)
    assert lines[-1] == f"eval.py stopped by {sig}" and "Traceback" not in w.err[seen:].decode()
    assert not any("stopped" in l for l in lines[:-1])


def test_a_batch_size_past_the_work_runs_the_rows_there_are(setup, monkeypatch):
    """--batch_size 100000000 on a text of 40 windows was OOM-killed at 24 GB: the batch is
    cut to the rows there are (tests/evaluation/test_scoring.py checks the answers against the default
    batch's)."""
    import gpt_jax.evaluation.scoring as scoring
    d, params = setup
    rows = []
    real = scoring.Scorer.__call__

    def spy(self, p, tokens, at, targets):   # stop a huge batch before it allocates more
        rows.append(tokens.shape[0])
        assert tokens.shape[0] <= 64, f"a batch of {tokens.shape[0]} rows reached the scorer"
        return real(self, p, tokens, at, targets)
    monkeypatch.setattr(scoring.Scorer, "__call__", spy)
    out = d / "text-big.json"
    eval_main()(["--init_from", str(d / "out"), "--task", "text", "--data", str(d / "text.txt"),
                 "--stride", "16", "--batch_size", "100000000", "--json", str(out)])
    windows = scoring.n_windows(json.loads(out.read_text())["tokens"], CFG, 16)
    assert rows == [windows] and windows > 1
