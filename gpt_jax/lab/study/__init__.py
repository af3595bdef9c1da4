"""`python study.py`: the chapter's claims (Pre-LN vs Post-LN, weight tying, the causal mask,
generation strategies, the KV cache) measured on the built-in corpus, written as figures and a
markdown report (docs/study/ by default). experiments.py measures, report.py writes, runs.py
trains (through the library's train step); --tiny runs every experiment in seconds (tests)."""
from __future__ import annotations

import os
import platform
import threading
import time

from gpt_jax.checkpoint.load import load_model
from gpt_jax.lab.study import experiments as ex
from gpt_jax.lab.study import report
from gpt_jax.lab.study.experiments import FULL, TINY, Scale
from gpt_jax.lab.study.runs import load_data, train
from gpt_jax.model.tokenizer import get_tokenizer

__all__ = ["FULL", "TINY", "Progress", "Scale", "machine", "run_study"]


class Progress:
    """A running study, for another thread (study.py's signal watcher): save() writes the
    report of what has ended, between the study's own saves, and says what it kept."""

    def __init__(self):
        self.save_now = None   # run_study sets it

    def save(self) -> str:
        return self.save_now() if self.save_now is not None else "nothing had ended yet"


def machine() -> str:
    """CPU model and core count (lscpu's model name, or platform's)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores"


def run_study(s: Scale, out_dir: str, *, model_dir: str | None = None, only=None,
              log=print, step: int | None = None, model=None,
              progress: Progress | None = None) -> dict:
    """Every experiment at scale s (only: a subset of norm, heads, mask, strategies, kv);
    writes out_dir/report.md and its figures; returns the results. model_dir: the model the
    generation strategies use (load_model: a train.py out_dir, its latest checkpoint or
    `step`, or a Hugging Face directory / gpt2* name), loaded before anything trains; model:
    its (params, cfg) when the caller loaded it already (model_dir then names it).
    progress: lets another thread save what has ended while the study runs (Progress)."""
    from tqdm import tqdm
    only = set(only or ("norm", "heads", "mask", "strategies", "kv"))
    if model is None and model_dir and "strategies" in only:   # a bad one fails at once
        model = load_model(model_dir, step)
    t0 = time.perf_counter()
    data = load_data(max(s.block_size, 1), 50257)
    enc = get_tokenizer()
    res: dict = {}

    lock = threading.Lock()

    def save(done: bool = False) -> str:
        # after each experiment, so an interrupted run leaves what it measured; from another
        # thread too (progress), on a copy of what has ended, one save at a time
        with lock:
            snap = {k: list(v) if isinstance(v, list) else v for k, v in dict(res).items()}
            if not snap.get("norm"):
                snap.pop("norm", None)   # the sweep's first run has not ended
            kept = [k for k in ("strategies", "heads", "mask", "kv") if k in snap]
            if "norm" in snap:
                kept.append(f"{len(snap['norm'])} norm run{'s' * (len(snap['norm']) > 1)}")
            if not kept:
                return "nothing had ended yet"
            seconds = time.perf_counter() - t0
            header = (f"`python study.py{' --tiny' if s == TINY else ''}`: "
                      f"{seconds / 60:.1f} minutes on {machine()}"
                      + ("." if done else " (unfinished: the sections below are those done)."))
            res["seconds"], res["report"] = seconds, report.write(out_dir, s, snap, header)
            return f"kept {', '.join(kept)} in {res['report']}"

    if progress is not None:
        progress.save_now = save

    n_norm = len(s.norm_depths) * 2 * 2 * len(s.norm_lrs) * s.norm_steps
    total = s.steps * (1 + ("heads" in only) + ("mask" in only)) + n_norm * ("norm" in only)
    with tqdm(total=total, unit="step", desc="training", dynamic_ncols=True) as bar:
        default = train(ex.model_config(s), data, steps=s.steps, lr=s.lr, warmup=s.warmup,
                        batch_size=s.batch_size, eval_iters=s.eval_iters, label="default",
                        keep_params=True, bar=bar)
        if "strategies" in only:
            bar.write("generation strategies ...")
            params, cfg = default.params, default.cfg
            where = (f"The study's default model: {cfg.n_layer} layers x {cfg.n_embd}, block "
                     f"{cfg.block_size}, {s.steps} steps (val loss {default.val_loss:.3f}).")
            if model is not None:
                params, cfg = model
                where = (f"The model {model_dir or 'given'}"
                         f"{'' if step is None else f' at step {step}'}: {cfg.n_layer} layers "
                         f"x {cfg.n_embd}.")
            res["strategies"] = ex.strategies(s, params, cfg, data, enc)
            res["strategies_model"] = where + f" {s.samples} samples of {s.new_tokens} " \
                "tokens each after 16-token val-set prompts; log p is the model's own, per " \
                "sampled token.\n"
            save()
        if "heads" in only:
            res["heads"] = ex.heads(s, data, default, bar=bar)
            save()
        if "mask" in only:
            res["mask"] = m = ex.mask_experiment(s, data, default, bar=bar)
            if "bi_samples" in m:
                m["bi_text"] = enc.decode(m["bi_samples"][0])
            save()
        if "kv" in only:
            bar.write("KV cache timing ...")
            res["kv"] = ex.kv_cache_timing(s)
            save()
        if "norm" in only:
            res["norm"] = []
            try:
                ex.norm_sweep(s, data, bar=bar, runs=res["norm"])
            except BaseException:   # interrupted (Ctrl-C, timeout): keep the runs that ended
                if res["norm"]:
                    save()
                raise
    save(done=True)
    log(f"wrote {res['report']} in {res['seconds']:.0f}s")
    return res
