"""metrics.jsonl and loss.png (gpt_jax/train/metrics.py)."""
import os

from gpt_jax.train.metrics import (LOSS_PLOT, METRICS, append_metrics, plot_loss, read_metrics,
                             restart_metrics)


def rows(steps):
    return [{"kind": "train", "step": s, "loss": 5.0 - s / 10} for s in steps]


def test_rows_append_read_and_restart(tmp_path):
    out = str(tmp_path)
    assert read_metrics(out) == []
    for r in rows([1, 2, 3, 4]):
        append_metrics(out, r)
    with open(os.path.join(out, METRICS), "a") as f:
        f.write('{"kind": "train", "st')          # a line cut short by a kill
    assert read_metrics(out) == rows([1, 2, 3, 4])
    restart_metrics(out, 2)                        # resumed at step 2: its later rows go
    assert read_metrics(out) == rows([1, 2])
    restart_metrics(out, 0)                        # a new run: a new file
    assert not os.path.exists(os.path.join(out, METRICS))


def test_plot_loss_writes_the_png(tmp_path):
    out = str(tmp_path)
    for r in rows([1, 2]) + [{"kind": "eval", "step": 2, "train_loss": 4.8, "val_loss": 4.9}]:
        append_metrics(out, r)
    plot_loss(out)
    with open(os.path.join(out, LOSS_PLOT), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(out)) == sorted([METRICS, LOSS_PLOT])


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def task_row(step, task="lambada", **metrics):
    return {"kind": "eval_task", "step": step, "task": task, "n": 8, "seconds": 0.5,
            **(metrics or {"acc": 0.25, "ppl": 900.0 - step})}


def test_restart_drops_later_eval_task_rows(tmp_path):
    out = str(tmp_path)
    for s in (0, 2, 4):
        append_metrics(out, {"kind": "eval", "step": s, "train_loss": 5.0, "val_loss": 5.1})
        append_metrics(out, task_row(s))
    restart_metrics(out, 2)      # resumed at step 2: step 4's rows are written again later
    assert [(r["kind"], r["step"]) for r in read_metrics(out)] == [
        ("eval", 0), ("eval_task", 0), ("eval", 2), ("eval_task", 2)]


def test_plot_loss_adds_a_panel_for_eval_tasks(tmp_path):
    plain, with_tasks = tmp_path / "plain", tmp_path / "tasks"
    for d in (plain, with_tasks):
        d.mkdir()
        for r in rows([1, 2]) + [{"kind": "eval", "step": 2, "train_loss": 4.8,
                                  "val_loss": 4.9}]:
            append_metrics(str(d), r)
    for s in (0, 2):
        append_metrics(str(with_tasks), task_row(s))
        append_metrics(str(with_tasks), task_row(s, "hellaswag", acc=0.3, acc_norm=0.31))
    plot_loss(str(plain))
    plot_loss(str(with_tasks))
    (w0, h0), (w1, h1) = png_size(plain / LOSS_PLOT), png_size(with_tasks / LOSS_PLOT)
    assert w1 == w0 and h1 > 1.5 * h0     # a second panel under the losses
