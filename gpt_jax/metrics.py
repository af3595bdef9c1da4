"""out_dir/metrics.jsonl (one JSON object per line: train and eval rows, see docs/design.md)
and out_dir/loss.png drawn from it."""
from __future__ import annotations

import json
import os

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"


def read_metrics(out_dir: str) -> list[dict]:
    path = os.path.join(out_dir, METRICS)
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by a kill
    return rows


def append_metrics(out_dir: str, row: dict) -> None:
    with open(os.path.join(out_dir, METRICS), "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(out_dir: str, step: int) -> None:
    """Drop rows beyond `step` (a resumed run writes them again), atomically."""
    path = os.path.join(out_dir, METRICS)
    rows = [r for r in read_metrics(out_dir) if r.get("step", 0) <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(path + ".tmp", path)


def restart_metrics(out_dir: str, step: int) -> None:
    """Make metrics.jsonl fit a run that starts at `step`: a resumed run keeps the rows up to
    it; a run from step 0 starts a new file."""
    if step > 0:
        truncate_metrics(out_dir, step)
    elif os.path.exists(os.path.join(out_dir, METRICS)):
        os.remove(os.path.join(out_dir, METRICS))


def plot_loss(out_dir: str) -> None:
    """Redraw out_dir/loss.png from metrics.jsonl (written to a temporary name, then renamed:
    a reader never sees half a file)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_metrics(out_dir)
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.5,
                label="train (batch)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", ms=3,
                label="train (eval)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "s-", ms=3,
                label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(os.path.basename(os.path.abspath(out_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = os.path.join(out_dir, "loss.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, os.path.join(out_dir, LOSS_PLOT))
