"""Zero-shot tasks scored while a model trains (train.py --eval_tasks), as llm.c and
build-nanogpt score HellaSwag while GPT-2 trains.

    specs = parse_spec("hellaswag=val.jsonl,lambada=lambada_test.jsonl")  # grammar and names
    check_files(specs)                     # the files exist: before anything is built
    evals = TaskEvals(specs, cfg, limit=500)         # read and encoded once
    for row in evals(params, step): ...    # {"kind": "eval_task", "step", "task", "n", ...}

A task without `=PATH` scores its standard file (gpt_jax.evaluation.tasks.default_data: downloaded into
the cache on first use). Scoring runs on the run's own params as they are, stacked for
scan_layers and sharded on its mesh (gpt_jax.evaluation.scoring takes both), so every process of a
multi-process run must call it; only process 0 writes the rows (the trainer sees to that).
"""
from __future__ import annotations

import os
import time
from typing import Optional

import gpt_jax.evaluation.tasks as tasks
from gpt_jax.model.config import GPTConfig
from gpt_jax.errors import ConfigError, DataError

FORMAT = "TASK[=PATH][,TASK[=PATH]...], e.g. hellaswag=hellaswag_val.jsonl,lambada=lambada.jsonl"


def parse_spec(spec: str) -> list[tuple[str, Optional[str]]]:
    """--eval_tasks "hellaswag=PATH,lambada" -> [("hellaswag", PATH), ("lambada", None)].
    Empty -> []. Bad grammar, an unknown task or a task named twice is a one-line
    ConfigError (the files are checked by check_files)."""
    if not isinstance(spec, str):
        raise ConfigError(f"eval_tasks must be a string {FORMAT}, got {spec!r}")
    out: list[tuple[str, Optional[str]]] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            if spec.strip():
                raise ConfigError(f"eval_tasks {spec!r} has an empty entry; expected {FORMAT}")
            continue
        task, sep, path = (s.strip() for s in part.partition("="))
        if task not in tasks.TASKS:
            raise ConfigError(f"eval_tasks: unknown task {task!r} in {spec!r}; choose from "
                              f"{', '.join(tasks.TASKS)} ({FORMAT})")
        if sep and not path:
            raise ConfigError(f"eval_tasks: {task}= needs a path after '=' (or drop '=' for the "
                              f"standard file)")
        if task in (t for t, _ in out):
            raise ConfigError(f"eval_tasks names {task} twice; give each task once")
        out.append((task, path or None))
    return out


def check_files(specs: list[tuple[str, Optional[str]]]) -> None:
    """Each PATH given is an existing file: a one-line DataError otherwise (said before the run
    builds, downloads or compiles anything)."""
    for task, path in specs:
        if path is None:
            continue
        if not os.path.exists(path):
            raise DataError(f"--eval_tasks {task}={path}: the file does not exist")
        if not os.path.isfile(path):
            raise DataError(f"--eval_tasks {task}={path} is not a file: pass a {task} "
                            f"{'text file' if task == 'text' else 'jsonl file'}")


class TaskEvals:
    """The run's zero-shot tasks, read and encoded once (bad rows are one-line DataErrors now,
    not at the first eval). limit: the first rows of each file (for text: tokens)."""

    def __init__(self, specs: list[tuple[str, Optional[str]]], cfg: GPTConfig,
                 limit: Optional[int] = None):
        self.cfg = cfg
        self.data = []
        for task, path in specs:
            if path is None:
                path = tasks.default_data(task, hint=f"pass --eval_tasks {task}=PATH with a "
                                                     f"local copy")
            self.data.append(tasks.load_task(task, path, cfg, limit))

    def __call__(self, params, step: Optional[int]) -> list[dict]:
        """One metrics.jsonl row per task: {"kind": "eval_task", "step", "task", "n",
        <the task's metrics>, "seconds"} (step None: not a training step, e.g. --eval_only)."""
        rows = []
        for data in self.data:
            t0 = time.perf_counter()
            out = tasks.score_task(params, self.cfg, data)
            rows.append({"kind": "eval_task", "step": step, **out,
                         "seconds": round(time.perf_counter() - t0, 3)})
        return rows


def format_row(row: dict) -> str:
    """The one line a row prints: `step 50: hellaswag acc 0.2600 acc_norm 0.2800 (n=100, 3.1s)`
    (`eval: ...` without a step)."""
    metrics = " ".join(f"{m} {row[m]:.4f}" for m in tasks.METRICS[row["task"]]
                       if m != "tokens")
    where = "eval" if row["step"] is None else f"step {row['step']}"
    return f"{where}: {row['task']} {metrics} (n={row['n']}, {row['seconds']:.1f}s)"
