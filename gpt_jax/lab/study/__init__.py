"""`python study.py`: the chapter's claims (Pre-LN vs Post-LN, weight tying, the causal mask,
generation strategies, the KV cache) measured on the built-in corpus, written as figures and a
markdown report (docs/study/ by default). experiments.py measures, report.py writes, runs.py
trains (through the library's train step); --tiny runs every experiment in seconds (tests)."""
from __future__ import annotations

import os
import platform
import time

from gpt_jax.checkpoint.manager import load_checkpoint
from gpt_jax.lab.study import experiments as ex
from gpt_jax.lab.study import report
from gpt_jax.lab.study.experiments import FULL, TINY, Scale
from gpt_jax.lab.study.runs import load_data, train
from gpt_jax.model.tokenizer import get_tokenizer

__all__ = ["FULL", "TINY", "Scale", "machine", "run_study"]


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
              log=print) -> dict:
    """Every experiment at scale s (only: a subset of norm, heads, mask, strategies, kv);
    writes out_dir/report.md and its figures; returns the results."""
    from tqdm import tqdm
    only = set(only or ("norm", "heads", "mask", "strategies", "kv"))
    t0 = time.perf_counter()
    data = load_data(max(s.block_size, 1), 50257)
    enc = get_tokenizer()
    res: dict = {}

    def save(done: bool = False):
        # after each experiment, so an interrupted run leaves what it measured
        seconds = time.perf_counter() - t0
        res["seconds"] = seconds
        header = (f"`python study.py{' --tiny' if s == TINY else ''}`: "
                  f"{seconds / 60:.1f} minutes on {machine()}"
                  + ("." if done else " (unfinished: the sections below are those done)."))
        res["report"] = report.write(out_dir, s, res, header)

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
            if model_dir:
                params, cfg = load_checkpoint(model_dir)
                where = f"The model in {model_dir} (a train.py run, its latest checkpoint)."
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
