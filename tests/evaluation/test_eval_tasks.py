"""gpt_jax.evaluation.task_evals: the --eval_tasks spec, its one-line errors, and rows that equal
gpt_jax.evaluation.tasks.run_task (which tests/evaluation/test_tasks.py checks against transformers) on the same files,
for GPT-2-layout and scan_layers-stacked params alike. The training run that writes the rows is
in tests/cli/test_train_cli.py."""
import json

import jax
import pytest

import gpt_jax
import gpt_jax.evaluation.task_evals as eval_tasks
from task_files import task_files
import gpt_jax.evaluation.tasks as tasks
from gpt_jax.errors import ConfigError, DataError, UserError
from gpt_jax.model.stacking import stack_layers

CFG = gpt_jax.GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)
def test_parse_spec():
    assert eval_tasks.parse_spec("") == [] and eval_tasks.parse_spec("  ") == []
    assert eval_tasks.parse_spec("hellaswag=a/b.jsonl, lambada=c=d.jsonl,text") == [
        ("hellaswag", "a/b.jsonl"), ("lambada", "c=d.jsonl"), ("text", None)]


@pytest.mark.parametrize("spec,match", [
    ("mmlu=x.jsonl", "unknown task 'mmlu'"),
    ("hellaswag=a,", "empty entry"),
    ("hellaswag=", "needs a path"),
    ("lambada=a,lambada=b", "names lambada twice"),
    ("=a.jsonl", "unknown task ''"),
])
def test_bad_specs_are_one_line(spec, match):
    with pytest.raises(ConfigError, match=match) as e:
        eval_tasks.parse_spec(spec)
    assert "\n" not in str(e.value)


def test_missing_files_are_one_line(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        eval_tasks.check_files([("hellaswag", str(tmp_path / "nope.jsonl"))])
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match="is not a file"):
        eval_tasks.check_files([("lambada", str(tmp_path))])
    eval_tasks.check_files([("text", None)])     # the standard file: fetched later, not here


def test_rows_equal_run_task_for_both_layouts(tmp_path):
    files = task_files(tmp_path)
    params = gpt_jax.init_params(CFG, jax.random.key(0))
    specs = eval_tasks.parse_spec(",".join(f"{t}={p}" for t, p in files.items()))
    evals = eval_tasks.TaskEvals(specs, CFG, limit=4)
    stacked = stack_layers(params, CFG.n_layer)        # a scan_layers run's layout
    for step, p in ((0, params), (7, stacked)):
        rows = evals(p, step)
        assert [r["task"] for r in rows] == ["hellaswag", "lambada", "text"]
        for row in rows:
            want = tasks.run_task(params, CFG, row["task"], files[row["task"]], limit=4)
            assert row["kind"] == "eval_task" and row["step"] == step and row["n"] == want["n"]
            assert row["n"] == 4 and row["seconds"] >= 0
            for m in tasks.METRICS[row["task"]]:
                assert row[m] == pytest.approx(want[m], rel=1e-5), (row, want)
            line = eval_tasks.format_row(row)
            assert line.startswith(f"step {step}: {row['task']} ") and "\n" not in line
    json.dumps(rows)     # a metrics.jsonl row


def test_bad_rows_are_said_when_loading(tmp_path):
    """A broken file fails when the run starts (TaskEvals), not at its first evaluation."""
    bad = tmp_path / "hs.jsonl"
    bad.write_text('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n{oops\n')
    with pytest.raises(UserError, match="line 2: not valid JSON"):
        eval_tasks.TaskEvals([("hellaswag", str(bad))], CFG)
