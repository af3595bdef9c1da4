"""out_dir/metrics.jsonl (one JSON object per line: train, eval and eval_task rows, see
docs/design.md) and out_dir/loss.png drawn from it."""
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
    """Redraw out_dir/loss.png from metrics.jsonl: the losses (updates the spike guard skipped
    marked), a training-health panel (when the train rows carry health keys) and a panel of
    the eval_task metrics (when there are any) against the step. Written to a temporary name, then
    renamed: a reader never sees half a file."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read_metrics(out_dir)
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    tasks = [r for r in rows if r.get("kind") == "eval_task"]
    skips = [r for r in rows if r.get("kind") == "skip"]
    health = [r for r in train if "update_ratio" in r]
    n = 1 + bool(health) + bool(tasks)
    fig, axes = plt.subplots(n, 1, squeeze=False, sharex=True, figsize=(7, 1.0 + 3.2 * n),
                             dpi=110)
    ax = axes[0, 0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], lw=0.8, alpha=0.5,
                label="train (batch)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", ms=3,
                label="train (eval)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "s-", ms=3,
                label="val")
    if skips:
        ax.plot([r["step"] for r in skips], [r["loss"] for r in skips], "rx", ms=6,
                label="skipped update")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(os.path.basename(os.path.abspath(out_dir)))
    ax.grid(alpha=0.3)
    ax.legend()
    if health:
        plot_health(axes[1, 0], health)
    if tasks:
        plot_tasks(axes[-1, 0], tasks)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    tmp = os.path.join(out_dir, "loss.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, os.path.join(out_dir, LOSS_PLOT))


# eval_task metrics that are fractions (left axis); the others (ppl, bits_per_byte) go on a
# log-scaled right axis. The row keys that are not metrics are left out.
FRACTIONS = ("acc", "acc_norm")
NOT_METRICS = ("kind", "step", "task", "n", "tokens", "seconds")


def plot_tasks(ax, rows: list[dict]) -> None:
    """The eval_task panel: one line per (task, metric) against the step."""
    series: dict[tuple[str, str], list] = {}
    for r in rows:
        for k, v in r.items():
            if k not in NOT_METRICS and isinstance(v, (int, float)):
                series.setdefault((r["task"], k), []).append((r["step"], v))
    right = None
    for i, ((task, metric), points) in enumerate(series.items()):
        steps, values = zip(*sorted(points))
        if metric in FRACTIONS:
            ax.plot(steps, values, "o-", ms=3, color=f"C{i}", label=f"{task} {metric}")
        else:
            right = right or ax.twinx()
            right.plot(steps, values, "^--", ms=3, color=f"C{i}",
                       label=f"{task} {metric} (right)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if right is not None:
        right.set_yscale("log")
        right.set_ylabel("perplexity / bits per byte")
        h, l = right.get_legend_handles_labels()
        handles, labels = handles + h, labels + l
    ax.set_title("eval tasks", fontsize=9)
    ax.legend(handles, labels, fontsize=8)


def plot_health(ax, rows: list[dict]) -> None:
    """The training-health panel: the pre-clip gradient norm and each layer's (thin), log
    scale, on the left; the update/param norm ratio on the right."""
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["grad_norm"] for r in rows], color="k", lw=1.0, label="grad norm")
    layers = sorted({k for r in rows for k in r if k.startswith("grad_norm/h_")},
                    key=lambda k: int(k.rsplit("_", 1)[1]))
    for i, k in enumerate(layers):
        ax.plot(steps, [r.get(k, float("nan")) for r in rows], lw=0.6, alpha=0.6,
                color=f"C{i % 10}", label=k.split("/")[1] if len(layers) <= 12 else None)
    ax.set_yscale("log")
    ax.set_ylabel("gradient norm (pre-clip)")
    ax.grid(alpha=0.3)
    right = ax.twinx()
    right.plot(steps, [r["update_ratio"] for r in rows], "--", color="C3", lw=1.0,
               label="|update| / |params| (right)")
    right.set_yscale("log")
    right.set_ylabel("update / param norm")
    h, l = ax.get_legend_handles_labels()
    h2, l2 = right.get_legend_handles_labels()
    ax.legend(h + h2, l + l2, fontsize=7, ncol=2)
    ax.set_title("training health", fontsize=9)
