"""metrics.jsonl and loss.png (gpt_jax/metrics.py)."""
import os

from gpt_jax.metrics import (LOSS_PLOT, METRICS, append_metrics, plot_loss, read_metrics,
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
