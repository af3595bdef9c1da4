"""run_study: every topic of the chapter measured in turn, the report rewritten after each.

A topic is a module of this package with `FULL` / `TINY` settings, `measure(settings, data,
bar=, log=) -> dict` (plain numbers) and `section(results, out_dir) -> str` (its figures and
markdown). The report is rebuilt from the results of the topics that have ended, so a run
stopped half-way (Ctrl-C, a time limit) keeps everything it measured.
"""
from __future__ import annotations

import json
import os
import platform
import threading
import time

import gpt_jax.lab.study.kv as kv
import gpt_jax.lab.study.mlm as mlm
import gpt_jax.lab.study.norm as norm
import gpt_jax.lab.study.probe as probe
import gpt_jax.lab.study.strategies as strategies
import gpt_jax.lab.study.tying as tying
from gpt_jax.lab.study.runs import load_data
from gpt_jax.lab.study.vocab import small_vocab, unigram_loss

__all__ = ["TOPICS", "VOCAB", "Progress", "machine", "run_study"]

# the chapter's order (docs/chapter.md sections 3-7); also the order they run in
TOPICS = {"mlm": mlm, "probe": probe, "norm": norm, "tying": tying, "strategies": strategies,
          "kv": kv}
VOCAB = 1024   # the small vocabulary of the trained topics (vocab.py: why)


class Progress:
    """A running study, for another thread (study.py's signal watcher): save() writes the
    report of the topics that have ended and says what it kept."""

    def __init__(self):
        self.save_now = None   # run_study sets it

    def save(self) -> str:
        return self.save_now() if self.save_now is not None else "nothing had ended yet"


def machine() -> str:
    """CPU model and core count (/proc/cpuinfo's model name, or platform's)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def run_study(tiny: bool, out_dir: str, *, only=None, model_dir: str | None = None,
              model=None, log=print, progress: Progress | None = None) -> dict:
    """Measure each topic (TOPICS, or the subset `only`) and write out_dir/report.md, its
    figures and out_dir/report.json (every number the report quotes).

    Args:
        tiny: TINY settings (seconds; the tests) instead of FULL (~30 minutes on 2 cores).
        out_dir: where the report goes (created).
        only: topic names to run (default all), in any order; they run in TOPICS' order.
        model_dir, model: the strategies topic's model: (params, cfg) already loaded by the
            caller and the name to show for it (study.py --model); default the cached
            train.py model the topic trains once.
        log: progress lines.
        progress: lets another thread save what has ended while the study runs.

    Returns:
        The results per topic, plus "seconds" and "report" (the report's path).

    Raises:
        ValueError: an unknown topic in `only`.
    """
    from tqdm import tqdm
    names = list(TOPICS) if not only else [t for t in TOPICS if t in set(only)]
    unknown = sorted(set(only or ()) - set(TOPICS))
    if unknown:
        raise ValueError(f"unknown study topic(s) {', '.join(unknown)}: "
                         f"choose from {', '.join(TOPICS)}")
    t0, load0 = time.perf_counter(), load()
    gpt2 = load_data(1024, 50257)           # the built-in corpus in GPT-2 ids
    small = small_vocab(gpt2, VOCAB)
    res: dict = {"unigram": unigram_loss(small), "vocab": VOCAB}
    ended: list = []
    lock = threading.Lock()

    def save(done: bool = False) -> str:
        # after each topic, and from another thread (progress): one save at a time, of the
        # topics that have ended
        with lock:
            if not ended:
                return "nothing had ended yet"
            minutes = (time.perf_counter() - t0) / 60
            head = (f"`python study.py{' --tiny' if tiny else ''}`: {minutes:.1f} minutes on "
                    f"{machine()}, load average {load0} at the start and {load()} at the end"
                    + ("." if done else " (unfinished: the sections below are those that "
                                        "ended)."))
            parts = [f"# Study report\n\n{head}\n",
                     f"Trained topics use the built-in corpus re-coded to its {VOCAB - 1} most "
                     f"frequent GPT-2 ids plus UNK (gpt_jax/lab/study/vocab.py); a model that "
                     f"learned only token frequencies scores the unigram loss, "
                     f"**{res['unigram']:.3f}** nats on val.\n"]
            parts += [TOPICS[t].section(res[t], out_dir) for t in ended]
            os.makedirs(out_dir, exist_ok=True)
            path = os.path.join(out_dir, "report.md")
            with open(path, "w") as f:
                f.write("\n".join(parts) + "\n")
            with open(os.path.join(out_dir, "report.json"), "w") as f:
                json.dump({k: res[k] for k in ("unigram", "vocab", *ended)}, f, indent=1)
            res["seconds"], res["report"] = time.perf_counter() - t0, path
            return f"kept {', '.join(ended)} in {path}"

    if progress is not None:
        progress.save_now = save
    for name in names:
        mod = TOPICS[name]
        extra = {}
        if name == "strategies":   # --tiny caches its tiny model beside its report
            extra = {"model": model, "model_dir": model_dir if model is not None or not tiny
                     else os.path.join(out_dir, "model")}
        data = gpt2 if name == "strategies" else small
        with tqdm(unit="step", desc=name, dynamic_ncols=True) as bar:
            out = mod.measure(mod.TINY if tiny else mod.FULL, data, bar=bar, log=bar.write,
                              **extra)
        with lock:
            res[name] = out
            ended.append(name)
        log(f"{name}: done, {(time.perf_counter() - t0) / 60:.1f} minutes in")
        save()
    save(done=True)
    log(f"wrote {res['report']} in {res['seconds']:.0f}s")
    return res
