"""Zero-shot evaluation tasks: HellaSwag, LAMBADA and the perplexity of a text.

run_task(params, cfg, task, path) reads a task's file, scores it with gpt_jax.evaluation.scoring and
returns {"task", "n", <metrics>}: the library call behind `python eval.py --task ...`. It is
load_task (read and encode the file) then score_task (score and aggregate): a training run
(gpt_jax/evaluation/task_evals.py) loads once and scores at every eval_interval, and the compiled scorer
is kept per config.

- hellaswag: jsonl rows {"ctx", "endings": [4 strings], "label"} (the official
  hellaswag_val.jsonl, 10,042 rows). Each ending is scored as " " + ending after ctx, the two
  encoded apart. acc: argmax of the summed log-prob; acc_norm: argmax of the mean per-token
  log-prob (build-nanogpt's and llm.c's "completion style"; lm-eval's hellaswag task differs).
- lambada: jsonl rows {"text"} (OpenAI's lambada_test.jsonl, 5,153 rows; lm-eval's
  lambada_openai). Context: the text up to its last space; target: " " + the last word, split
  off the encoded whole as lm-eval does. acc: every target token greedy; ppl: exp(-mean over rows
  of the target's summed log-prob).
- text: a UTF-8 file scored with token_logprobs at `stride`: tokens, ppl (per token) and
  bits_per_byte (-sum log p / ln 2 / UTF-8 bytes).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import urllib.request
from typing import NamedTuple, Optional

import numpy as np

from gpt_jax.model.config import GPTConfig
from gpt_jax.errors import DataError, UserError
import gpt_jax.checkpoint.load as checkpoint_load
import gpt_jax.evaluation.scoring as scoring
from gpt_jax.model.tokenizer import EOT_TOKEN, get_tokenizer

TASKS = ("hellaswag", "lambada", "text")
METRICS = {"hellaswag": ("acc", "acc_norm"), "lambada": ("acc", "ppl"),
           "text": ("tokens", "ppl", "bits_per_byte")}

# The standard files, fetched into the cache directory when --data is not given.
SOURCES = {
    "hellaswag": ("hellaswag_val.jsonl",
                  "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/"
                  "hellaswag_val.jsonl"),
    "lambada": ("lambada_test.jsonl",
                "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"),
    # WikiText-2 raw, test split, through Hugging Face `datasets`, joined with "\n\n" as in
    # Hugging Face's "perplexity of fixed-length models" guide.
    "text": ("wikitext-2-raw-v1-test.txt", "Salesforce/wikitext:wikitext-2-raw-v1:test"),
}
FULL_SIZE = {"hellaswag": 10042, "lambada": 5153}

# Published numbers for released GPT-2 sizes, shown next to ours where they apply.
# hellaswag: build-nanogpt / llm.c completion style on the 10,042 validation rows;
# lambada: lm-eval's lambada_openai; text: Hugging Face's perplexity guide, gpt2-large on
# WikiText-2 raw test at stride 512.
REFERENCES = {
    ("gpt2", "hellaswag"): {"acc": 0.2859, "acc_norm": 0.2955},
    ("gpt2-xl", "hellaswag"): {"acc": 0.3842, "acc_norm": 0.4893},
    ("gpt2", "lambada"): {"acc": 0.3256, "ppl": 40.06},
    ("gpt2-large", "text"): {"ppl": 16.44},
}


def load_model(init_from: str, step: Optional[int] = None, *,
               step_hint: str = "evaluate the latest with --step {step}",
               step_flag: str = "--step "):
    """(params, cfg) as eval.py and sample.py load them: checkpoint.load.load_model with the
    CLI's --step in its messages (step_flag: the caller's own step argument)."""
    return checkpoint_load.load_model(init_from, step, step_hint=step_hint, step_flag=step_flag)


def cache_dir() -> str:
    return os.environ.get("GPT_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "gpt_jax", "eval")


# -- data files -------------------------------------------------------------------------------

def default_data(task: str, hint: str = "pass --data PATH with a local copy") -> str:
    """The standard file of a task, downloaded into cache_dir() on first use. Offline (or on
    any failure) a one-line UserError ending in `hint` (what to pass instead)."""
    name, source = SOURCES[task]
    path = os.path.join(cache_dir(), name)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        return path
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if task == "text":
            _fetch_wikitext(source, tmp, hint)
        else:
            with urllib.request.urlopen(source, timeout=30) as r, open(tmp, "wb") as f:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
        os.replace(tmp, path)
    except UserError:
        raise
    except Exception as e:  # offline, DNS, HTTP error, disk full, ...
        why = (str(e).strip().splitlines() or [""])[0][:160]
        raise DataError(f"cannot download the {task} data ({source}: {type(e).__name__}: "
                        f"{why}); {hint}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _fetch_wikitext(source: str, out: str, hint: str) -> None:
    try:
        import datasets
    except ImportError:
        raise DataError(f"the default text data (WikiText-2) needs Hugging Face datasets: "
                        f"pip install 'gpt-jax[data]', or {hint}") from None
    repo, config, split = source.split(":")
    ds = datasets.load_dataset(repo, config, split=split)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n\n".join(ds["text"]))


def _open_text(path: str, task: str) -> str:
    if not os.path.exists(path):
        raise DataError(f"{task} data file {path} does not exist: pass --data PATH")
    if os.path.isdir(path):
        raise DataError(f"{task} data {path} is a directory: pass a file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if not text.strip():
        raise DataError(f"{task} data file {path} is empty")
    return text


def read_jsonl(path: str, task: str, fields: tuple[str, ...],
               limit: Optional[int] = None) -> list[tuple[int, dict]]:
    """[(line number, row)] of a jsonl file (blank lines skipped), up to `limit` rows. A broken
    line, a row that is not an object or lacks one of `fields` is a one-line DataError."""
    rows = []
    for lineno, line in enumerate(_open_text(path, task).splitlines(), 1):
        if not line.strip():
            continue
        if limit is not None and len(rows) >= limit:
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {lineno}: not valid JSON ({e.msg}, column {e.colno})")\
                from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object with "
                            f"{', '.join(fields)}, got {type(row).__name__}")
        missing = [k for k in fields if k not in row]
        if missing:
            raise DataError(f"{path} line {lineno}: missing field(s) {', '.join(missing)} "
                            f"(a {task} row needs {', '.join(fields)})")
        rows.append((lineno, row))
    return rows


def _string(value, path: str, lineno: int, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{path} line {lineno}: {what} must be a string, got "
                        f"{type(value).__name__}")
    return value


def _check_fits(n_tokens: int, cfg: GPTConfig, path: str, lineno: int, what: str) -> None:
    if n_tokens > cfg.block_size:
        raise DataError(f"{path} line {lineno}: {what} is {n_tokens} tokens, longer than the "
                        f"model's block_size {cfg.block_size}: it cannot be scored")


# -- building requests and aggregating ------------------------------------------------------

def hellaswag_requests(path: str, cfg: GPTConfig, limit: Optional[int] = None):
    """(requests, labels, endings per row): 4 requests per row, row-major."""
    enc = get_tokenizer()
    requests, labels, counts = [], [], []
    for lineno, row in read_jsonl(path, "hellaswag", ("ctx", "endings", "label"), limit):
        ctx = enc.encode(_string(row["ctx"], path, lineno, "ctx"))
        endings = row["endings"]
        if not isinstance(endings, list) or len(endings) < 2:
            raise DataError(f"{path} line {lineno}: endings must be a list of at least 2 "
                            f"strings")
        label = row["label"]
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)          # Hugging Face's copy stores labels as strings
        elif isinstance(label, float) and label.is_integer():
            label = int(label)          # 1.0, as a JSON writer may give an int
        if isinstance(label, bool) or not isinstance(label, int):
            raise DataError(f"{path} line {lineno}: label {row['label']!r} must be an integer, "
                            f"an ending's index 0 to {len(endings) - 1}")
        if not 0 <= label < len(endings):
            raise DataError(f"{path} line {lineno}: label {row['label']!r} is out of range: it "
                            f"must be an ending's index, 0 to {len(endings) - 1}")
        for j, ending in enumerate(endings):
            cont = enc.encode(" " + _string(ending, path, lineno, f"ending {j}"))
            _check_fits(len(cont), cfg, path, lineno, f"ending {j}")
            requests.append((ctx, cont))
        labels.append(label)
        counts.append(len(endings))
    return requests, labels, counts


def lambada_requests(path: str, cfg: GPTConfig, limit: Optional[int] = None):
    enc = get_tokenizer()
    requests = []
    for lineno, row in read_jsonl(path, "lambada", ("text",), limit):
        text = _string(row["text"], path, lineno, "text")
        context, sep, word = text.rpartition(" ")
        if not sep or not context:
            raise DataError(f"{path} line {lineno}: the text has no space to split its last "
                            f"word off")
        # lm-eval's split: encode the whole, the context's tokens are its first part.
        whole, ctx = enc.encode(text), enc.encode(context)
        cont = whole[len(ctx):]
        _check_fits(len(cont), cfg, path, lineno, "the last word")
        requests.append((ctx, cont))
    return requests


def _bar(total: int, unit: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit=unit, disable=not enabled, file=sys.stderr,
                dynamic_ncols=True, leave=False)


class TaskData(NamedTuple):
    """A task's file read and encoded once, to be scored again and again (score_task)."""
    task: str
    requests: list      # hellaswag, lambada: [(context ids, continuation ids)]
    labels: list        # hellaswag: the right ending of each row
    counts: list        # hellaswag: endings per row (its requests are row-major)
    tokens: list        # text: the token ids scored


def load_task(task: str, path: str, cfg: GPTConfig, limit: Optional[int] = None) -> TaskData:
    """Read and encode a task's file (limit: the first rows; for text: tokens). Bad data is a
    one-line DataError, raised here, before any scoring."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "hellaswag":
        requests, labels, counts = hellaswag_requests(path, cfg, limit)
        return TaskData(task, requests, labels, counts, [])
    if task == "lambada":
        return TaskData(task, lambada_requests(path, cfg, limit), [], [], [])
    tokens = get_tokenizer().encode(_open_text(path, task), allowed_special={EOT_TOKEN})[:limit]
    return TaskData(task, [], [], [], tokens)


def score_task(params, cfg: GPTConfig, data: TaskData, *, batch_size: Optional[int] = None,
               stride: Optional[int] = None, progress: bool = False) -> dict:
    """{"task", "n", <its metrics>} (METRICS[task]) of params on load_task's data. params may
    be a run's: stacked for scan_layers, sharded on a mesh (gpt_jax.evaluation.scoring takes both)."""
    task = data.task
    if task == "hellaswag":
        requests = data.requests
        with _bar(len(requests), "req", progress) as bar:
            answers = scoring.loglikelihood(params, cfg, requests, batch_size=batch_size,
                                            progress=bar.update)
        acc = acc_norm = 0
        i = 0
        for label, k in zip(data.labels, data.counts):
            sums = np.array([answers[i + j][0] for j in range(k)])
            lens = np.array([len(requests[i + j][1]) for j in range(k)])
            acc += int(np.argmax(sums)) == label
            acc_norm += int(np.argmax(sums / lens)) == label
            i += k
        n = len(data.labels)
        return {"task": task, "n": n, "acc": acc / n, "acc_norm": acc_norm / n}
    if task == "lambada":
        with _bar(len(data.requests), "req", progress) as bar:
            answers = scoring.loglikelihood(params, cfg, data.requests, batch_size=batch_size,
                                            progress=bar.update)
        n = len(answers)
        mean_logp = sum(lp for lp, _ in answers) / n
        return {"task": task, "n": n, "acc": sum(g for _, g in answers) / n,
                "ppl": math.exp(-mean_logp)}
    tokens = data.tokens
    with _bar(scoring.n_windows(len(tokens), cfg, stride), "window", progress) as bar:
        logp = scoring.token_logprobs(params, cfg, tokens, stride=stride,
                                      batch_size=batch_size, progress=bar.update)
    total = float(np.sum(logp, dtype=np.float64))
    n = len(tokens)
    n_bytes = len(get_tokenizer().decode_bytes(tokens))
    return {"task": task, "n": n, "tokens": n, "ppl": math.exp(-total / n),
            "bits_per_byte": -total / math.log(2) / n_bytes}


def run_task(params, cfg: GPTConfig, task: str, path: Optional[str] = None, *,
             limit: Optional[int] = None, batch_size: Optional[int] = None,
             stride: Optional[int] = None, progress: bool = False) -> dict:
    """Evaluate one task: {"task", "n", <its metrics>} (METRICS[task]) plus "seconds" (reading
    and scoring) and "examples_per_s". path None downloads the standard file (default_data).
    limit: the first `limit` rows (for text: tokens). progress: a tqdm bar on stderr."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise UserError(f"limit must be a positive integer, got {limit!r}")
    if stride is not None and task != "text":
        raise UserError("stride applies to the text task only")
    path = default_data(task) if path is None else path
    t0 = time.perf_counter()
    out = score_task(params, cfg, load_task(task, path, cfg, limit), batch_size=batch_size,
                     stride=stride, progress=progress)
    seconds = time.perf_counter() - t0
    out.update(seconds=seconds, examples_per_s=out["n"] / seconds if seconds > 0 else 0.0)
    return out


def reference(model: Optional[str], result: dict, *, stride: Optional[int] = None,
              default_data: bool = False) -> dict:
    """Published metrics for a released GPT-2 (`model` a hub name: gpt2, openai-community/gpt2,
    ...) where they apply: all rows of the standard HellaSwag / LAMBADA file, or the whole
    default WikiText-2 text at stride 512; else {}."""
    if model is None:
        return {}
    model = model.removeprefix("openai-community/")
    task = result["task"]
    if task == "text":
        applies = default_data and stride == 512
    else:
        applies = result["n"] == FULL_SIZE[task]
    return dict(REFERENCES.get((model, task), {})) if applies else {}


def format_table(result: dict, ref: Optional[dict] = None) -> str:
    """The results table: task, metric, value, n, and the reference where one is known."""
    ref = ref or {}
    lines = [f"{'task':<10} {'metric':<14} {'value':>12} {'n':>8} {'reference':>10}"]
    for metric in METRICS[result["task"]]:
        v = result[metric]
        value = f"{v:d}" if isinstance(v, int) else f"{v:.4f}"
        r = f"{ref[metric]:.4f}" if metric in ref else ""
        lines.append(f"{result['task']:<10} {metric:<14} {value:>12} {result['n']:>8} {r:>10}")
    return "\n".join(lines)


def evaluate(init_from: str, task: str, path: Optional[str] = None, *,
             limit: Optional[int] = None, batch_size: Optional[int] = None,
             stride: Optional[int] = None, step: Optional[int] = None) -> tuple[dict, str]:
    """`python eval.py --task`: load the model (load_model; `step`: a checkpoint step), run
    the task with a progress bar and say on stderr how long compiling and scoring took. Returns (run_task's result, the
    results table with the published reference where one applies)."""
    params, cfg = load_model(init_from, step)
    if stride is not None and stride > cfg.block_size:
        raise UserError(f"--stride must be at most the model's block_size {cfg.block_size}, "
                        f"got {stride}")
    print(f"[eval] model {init_from}: {cfg.n_layer} layers, {cfg.n_head} heads, "
          f"{cfg.n_embd} wide, block {cfg.block_size}, {cfg.dtype}; task {task}",
          file=sys.stderr)
    scorer = scoring.get_scorer(cfg)
    compile_before = scorer.compile_seconds
    result = run_task(params, cfg, task, path, limit=limit, batch_size=batch_size,
                      stride=stride, progress=True)
    compile_s = scorer.compile_seconds - compile_before
    unit = "tokens" if task == "text" else "examples"
    run_s = max(result["seconds"] - compile_s, 1e-9)
    print(f"[eval] {result['n']} {unit} in {result['seconds']:.1f}s, of which compiling "
          f"{compile_s:.1f}s: {result['n'] / run_s:,.1f} {unit}/s after compilation",
          file=sys.stderr)
    ref = reference(init_from, result, stride=stride or cfg.block_size,
                    default_data=path is None)
    return result, format_table(result, ref)


def write_json(path: str, obj) -> None:
    """eval.py --json: obj as indented JSON (a path that cannot be written is a UserError)."""
    try:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.write("\n")
    except OSError as e:
        raise UserError(f"cannot write --json {path}: {e.strerror or e}") from None
