"""Suites: one command for a fixed recipe of bench sections, each with its own options and time
budget, plus a pytest run, summarised as a markdown table (bench.py --suite NAME [--table FILE]).

The "gpu" suite is the first-GPU check (issue 15), sized to finish in under 8 minutes on an
H100/H200-class GPU. Its parts, in order, with their budgets (no GPU has run it yet: the
budgets are estimates, compile times dominate and the timed calls take seconds):
  1. tests (100 s): `pytest -m gpu tests/lab/test_gpu.py`: cuDNN attention, bfloat16 training,
     decoding and meshes checked against float32 references;
  2. machine (40 s): 8192^2 float32 and bfloat16 matmuls, a 4 GiB read;
  3. attention (50 s): jax.nn.dot_product_attention forward + backward at gpt2-124m's shapes
     (16 x 1024, 12 heads of 64) in bfloat16, implementation="cudnn" vs "xla";
  4. train (150 s): gpt2-124m (train.py --config gpt2-124m's model: vocab 50304) at batch
     16 x 1024 in bfloat16, cuDNN attention and XLA attention, MFU against the datasheet peak;
  5. decode (70 s): gpt2 in bfloat16, greedy, 32 + 128 tokens at batch 1 and 8;
  6. loglikelihood (50 s): gpt2 in bfloat16 over HellaSwag-shaped and LAMBADA-shaped requests.
Each part runs in its own process, killed at its budget: a part that fails, crashes the
process (a GPU out of memory, a cuDNN error) or runs past its budget becomes a "failed" row
and the rest still run. The budgets sum to 460 s. `--device cpu --tiny` runs the same plumbing
on tiny sizes.

`--suite gpu --peers true` adds the PyTorch peers on the GPU (bfloat16, torch with CUDA): the
train step's eager Hugging Face step and its two torch.compile'd ones (compiled.py), and
decode's eager and static-cache compiled generate(); each of those two steps gets its
peer_budget_s more (compiles dominate: estimates, no GPU has run them), and the wall-time
target grows by their sum. Without the flag the suite is as above.
"""
from __future__ import annotations

import collections
import datetime
import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, Optional

from gpt_jax.lab.bench import SECTIONS, attention, evaluation
from gpt_jax.lab.bench.harness import Context, Result, device_memory, machine_info
from gpt_jax.lab.bench.report import format_value

PEER_MARK = re.compile(r"\bHF\b|nanoGPT")   # the PyTorch peers' rows (--peers true)

# train.py --config gpt2-124m's model (the vocabulary padded to 50304, as nanoGPT's).
GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304)


@dataclass(frozen=True)
class Step:
    section: str       # a bench section, "attention", "loglikelihood", or "module:function"
    budget_s: float    # the step's process is killed past this (start-up included)
    options: dict = field(default_factory=dict)   # Context.options for this step
    peer_budget_s: float = 0.0   # more, when the suite times the PyTorch peers (--peers true)


@dataclass(frozen=True)
class Suite:
    preset: str                          # the model of the decode and scoring sections
    dtype: str                           # their compute dtype (and train's 16-bit variants)
    tests: tuple[str, ...]               # pytest arguments, run first in a subprocess
    tests_budget_s: float
    steps: tuple[Step, ...]              # in order
    min_mfu: float                       # targets, stated next to the table
    max_wall_s: float


SUITES = {
    "gpu": Suite(
        preset="gpt2", dtype="bfloat16",
        tests=("-m", "gpu", "tests/lab/test_gpu.py"), tests_budget_s=100.0,
        steps=(Step("machine", 40.0),
               Step("attention", 50.0),
               Step("train", 150.0, {"train_sizes": (("gpt2-124m", GPT2_124M, 16, 1024),),
                                     "train_float32": False}, peer_budget_s=240.0),
               Step("decode", 70.0, {"decode_references": False}, peer_budget_s=150.0),
               Step("loglikelihood", 50.0)),
        min_mfu=0.50, max_wall_s=480.0),
}


def sections() -> dict[str, Callable[[Context], list[Result]]]:
    """What a suite step may name: bench.py's sections and the suite-only ones."""
    return {**SECTIONS, "attention": attention.run, "loglikelihood": evaluation.throughput}


def resolve(section: str) -> Callable[[Context], list[Result]]:
    """A step's function: a section name, or "module:function" (an importable run(ctx))."""
    if ":" in section:
        module, func = section.split(":", 1)
        return getattr(importlib.import_module(module), func)
    return sections()[section]


# -- child processes -----------------------------------------------------------------------------

def run_child(cmd: list[str], env: dict, timeout: float, cwd: Optional[str] = None,
              echo=True) -> tuple[Optional[int], str, float]:
    """(return code or None when killed at timeout, the last 200 lines of its output, seconds)
    of cmd in its own process group, its output echoed to stderr as it comes."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tail = collections.deque(maxlen=200)

    def pump():
        for line in proc.stdout:
            tail.append(line)
            if echo:
                sys.stderr.write("  | " + line)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # the group: nothing it started outlives it
        proc.wait()
        rc = None
    reader.join(10)
    return rc, "".join(tail), time.perf_counter() - t0


def checkout_root() -> str:
    """The folder that holds this gpt_jax package: the repository root in a checkout (with
    tests/ beside it), site-packages when installed."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))


def child_env(env: Optional[dict], platform: Optional[str]) -> dict:
    """env (default: this process's) for a child that imports this very gpt_jax, on platform
    (JAX_PLATFORMS) when given."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    root = checkout_root()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    if platform:
        env["JAX_PLATFORMS"] = platform
    return env


def last_line(out: str) -> str:
    lines = [ln.strip() for ln in out.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


# -- the pytest run ----------------------------------------------------------------------------

def run_tests(name: str, root: str, platform: Optional[str] = None, env: Optional[dict] = None,
              timeout: Optional[float] = None, log=print) -> list[Result]:
    """Run the suite's pytest selection in a subprocess (cwd root) and return its outcome as
    rows of section "tests": passed, failed (failures and errors) and skipped counts, with the
    failing tests and the skip reasons in the config. platform: JAX_PLATFORMS for the child;
    timeout: the suite's tests budget by default. The child does not preallocate GPU memory
    (its tests are small)."""
    suite = SUITES[name]
    args = suite.tests
    timeout = suite.tests_budget_s if timeout is None else timeout
    label = "pytest " + " ".join(args)
    if importlib.util.find_spec("pytest") is None:
        return [Result("tests", label, "not run", 0.0, "tests",
                       {"reason": "pytest is not installed (pip install 'gpt-jax[test]')"})]
    if not os.path.isdir(os.path.join(root, "tests")):
        return [Result("tests", label, "not run", 0.0, "tests",
                       {"reason": f"no tests/ beside gpt_jax in {root}: the tests live in a "
                                  f"checkout of the repository, not in the wheel"})]
    env = {**child_env(env, platform), "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    log(f"[bench] {label} (budget {timeout:.0f} s) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        report = os.path.join(d, "junit.xml")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}", *args]
        rc, out, seconds = run_child(cmd, env, timeout, cwd=root)
        counts = read_junit(report) if os.path.exists(report) else None
    conf = {"command": label, "returncode": rc, "seconds": seconds, "budget_s": timeout}
    # pytest's exit codes: 0 passed, 1 some failed (both reported), 5 no tests collected;
    # anything else (a missing file, a crash, a timeout) is a failed run, report or not.
    if rc not in (0, 1, 5):
        counts = None
    if counts is None:
        conf["reason"] = (f"ran past its budget of {timeout:.0f} s" if rc is None
                          else last_line(out))
        return [Result("tests", label, "failed", 1.0, "tests", conf)]
    return [Result("tests", label, "passed", float(counts["passed"]), "tests", conf),
            Result("tests", label, "failed", float(len(counts["failures"])), "tests",
                   {**conf, "failures": counts["failures"]}),
            Result("tests", label, "skipped", float(len(counts["skipped"])), "tests",
                   {**conf, "skipped": counts["skipped"]})]


def read_junit(path: str) -> dict:
    """{"passed": n, "failures": ["test: first line of the message"], "skipped": [...]} of a
    pytest --junitxml report."""
    passed, failures, skipped = 0, [], []
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}.{case.get('name', '')}".strip(".")
        bad = case.find("failure")
        bad = case.find("error") if bad is None else bad
        skip = case.find("skipped")
        if bad is not None:
            failures.append(f"{test}: {(bad.get('message') or '').splitlines()[0][:200]}"
                            if bad.get("message") else test)
        elif skip is not None:
            skipped.append(f"{test}: {skip.get('message', '')[:200]}")
        else:
            passed += 1
    return {"passed": passed, "failures": failures, "skipped": skipped}


# -- the sections --------------------------------------------------------------------------------

# What one step's process is given (besides its options) and hands back to the next ones.
CONTEXT_FIELDS = ("repeats", "warmup", "preset", "dtype", "tiny")
MEASURED_FIELDS = ("peak_flops", "peak_flops_bf16")   # from the machine step, for MFU


def run_steps(name: str, ctx: Context, platform: Optional[str] = None,
              env: Optional[dict] = None, log=print) -> tuple[list[Result], Optional[dict]]:
    """The suite's steps in order, each in its own process killed at its budget; returns
    (rows, the machine description from the first step that gave one). Each step adds a wall
    time row (its process's start-up included) and, where the device keeps allocator
    statistics, its process's peak memory; a step that raised, crashed or ran past its budget
    adds a "failed" row (unit "error") with the reason instead of its figures."""
    rows: list[Result] = []
    machine = None
    measured = {k: getattr(ctx, k) for k in MEASURED_FIELDS}
    env = child_env(env, platform)
    peers = bool(ctx.options.get("peers"))
    for step in SUITES[name].steps:
        budget_s = step.budget_s + (step.peer_budget_s if peers else 0.0)
        step = Step(step.section, budget_s, step.options)
        spec = {"section": step.section, "options": {**ctx.options, **step.options},
                "context": {**{k: getattr(ctx, k) for k in CONTEXT_FIELDS}, **measured}}
        log(f"[bench] suite step {step.section} (budget {step.budget_s:.0f} s) ...",
            file=sys.stderr)
        with tempfile.TemporaryDirectory() as d:
            spec_path, out_path = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
            with open(spec_path, "w") as f:
                json.dump(spec, f)
            rc, out, seconds = run_child([sys.executable, "-m", "gpt_jax.lab.bench.suite",
                                          spec_path, out_path], env, step.budget_s)
            done = json.load(open(out_path)) if rc == 0 and os.path.exists(out_path) else None
        conf = {"budget_s": step.budget_s, "options": plain(step.options), "peers": peers}
        if done is None:
            reason = (f"ran past its budget of {step.budget_s:.0f} s" if rc is None else
                      f"exit code {rc}: {last_line(out)}")
            log(f"[bench] suite step {step.section} failed: {reason}", file=sys.stderr)
            rows.append(Result("suite", step.section, "failed", 1.0, "error",
                               {**conf, "error": reason, "returncode": rc,
                                "output_tail": out[-2000:]}))
        else:
            rows += [Result(**r) for r in done["results"]]
            machine = machine or done["machine"]
            measured.update({k: v for k, v in done["measured"].items() if v is not None})
            memory = done["device_memory"]
            if memory and "peak_bytes_in_use" in memory:
                rows.append(Result("suite", step.section, "peak bytes in use (allocator)",
                                   float(memory["peak_bytes_in_use"]), "bytes", memory))
        rows.append(Result("suite", step.section, "wall time", seconds, "s", conf))
    return rows, machine


def child_main(spec_path: str, out_path: str) -> None:
    """One step, in this process: the section's rows, the machine, the measured peaks and the
    allocator's figures, as JSON at out_path (written only when the section returned)."""
    with open(spec_path) as f:
        spec = json.load(f)
    ctx = Context(**spec["context"], options=spec["options"])
    results = resolve(spec["section"])(ctx)
    doc = {"results": [r.to_dict() for r in results], "machine": machine_info(),
           "measured": {k: getattr(ctx, k) for k in MEASURED_FIELDS},
           "device_memory": device_memory()}
    with open(out_path, "w") as f:
        json.dump(doc, f)


def plain(x):
    """JSON values (tuples become lists)."""
    return [plain(v) for v in x] if isinstance(x, (list, tuple)) else \
        {k: plain(v) for k, v in x.items()} if isinstance(x, dict) else x


# -- the markdown table --------------------------------------------------------------------------

def _find(results, section, metric, name=None, suffix=None):
    for r in results:
        if r.section == section and r.metric == metric and (name is None or r.name == name) \
                and (suffix is None or r.name.endswith(suffix)):
            return r
    return None


def _verdict(ok: Optional[bool], target: str) -> str:
    return f"{target}: " + ("n/a" if ok is None else "**met**" if ok else "**not met**")


def markdown_table(name: str, results: list[Result], machine: dict, command: str,
                   tiny: bool) -> str:
    """The suite's figures as a markdown table with the targets beside them, and a line that
    says where and how they were measured."""
    suite = SUITES[name]
    lines = []
    date = datetime.date.today().isoformat()
    where = (f"{machine.get('device_kind')} x {machine.get('device_count')} "
             f"({machine.get('platform')}), jax {machine.get('jax')}")
    lines.append(f"`{command}` on {where}, {date}.")
    if tiny or machine.get("platform") != "gpu":
        lines.append("**Plumbing run (not GPU figures):** "
                     + ("tiny sizes" if tiny else "no GPU") + f" on {machine.get('platform')}.")
    lines += ["", "| figure | result | target |", "|---|---|---|"]

    def add(figure, result, target=""):
        cells = (str(x).replace("|", "\\|").replace("\n", " ") for x in (figure, result, target))
        lines.append("| " + " | ".join(cells) + " |")

    tests = [r for r in results if r.section == "tests"]
    if tests:
        add(*_tests_line(tests))
    if not any(r.section == "attention" and r.config.get("implementation") == "cudnn"
               for r in results) and any(r.section == "attention" for r in results):
        add("cuDNN / XLA attention, forward + backward", "cuDNN not run: needs a GPU",
            _verdict(None, "> 1.00x"))
    for r in results:
        if r.section == "train" and r.unit == "tokens/s" and "attention" in r.config:
            c = r.config   # (the health-overhead rows' steps carry no attention: not tabled)
            figure = (f"train {r.name.split(' ')[0]}, batch {c['batch']} x {c['seq']}, "
                      f"{c['dtype']}, {c['attention']} attention")
            text = f"{r.value:,.0f} tokens/s, {1000 * r.median:.1f} ms/step"
            sheet = _find(results, "train", "MFU (vs datasheet peak)", r.name)
            measured = _find(results, "train", "MFU (vs measured matmul)", r.name)
            target = ""
            if sheet is not None:
                text += (f"; MFU {100 * sheet.value:.1f}% of {sheet.config['peak_flops'] / 1e12:,.0f}"
                         f" TFLOP/s (datasheet)")
                target = _verdict(sheet.value >= suite.min_mfu,
                                  f"MFU >= {100 * suite.min_mfu:.0f}%")
            elif c["dtype"] != "float32":
                target = _verdict(None, f"MFU >= {100 * suite.min_mfu:.0f}% (no datasheet peak)")
            if measured is not None:
                text += f"; {100 * measured.value:.1f}% of this run's measured matmul"
            add(figure, text, target)
        elif r.section == "train" and r.name.endswith("cudnn / xla attention"):
            add("cuDNN / XLA attention, train step", format_value(r.value, r.unit),
                _verdict(r.value > 1.0, "> 1.00x"))
        elif r.section == "decode" and r.unit == "tokens/s" and r.name.startswith("ours cached"):
            c = r.config
            text = f"{r.value:,.0f} tokens/s"
            frac = _find(results, "decode", "fraction of bandwidth floor", r.name)
            if frac is not None:
                text += f" ({100 * frac.value:.1f}% of the read-bandwidth floor)"
            add(f"decode {c['preset']}, {c['dtype']}, batch {c['batch']}, "
                f"{c['prompt']} + {c['new_tokens']} greedy tokens", text)
        elif r.section in ("train", "decode") and PEER_MARK.search(r.name) \
                and (r.unit == "tokens/s" or (r.unit == "x" and "CPU time" not in r.name)):
            add(f"{r.section} {r.name}", format_value(r.value, r.unit)
                + (f" (compile {r.compile_s:.0f} s)" if r.compile_s else ""))
        elif r.section in ("train", "decode") and r.unit == "skip":
            add(f"{r.section} {r.name}", f"skipped: {r.config.get('reason')}")
        elif r.section == "loglikelihood" and r.unit == "requests/s":
            c = r.config
            toks = _find(results, "loglikelihood", "scored tokens/s", r.name)
            add(f"loglikelihood {r.name}, {c['dtype']}: {c['requests']} requests of "
                f"{c['context_tokens']} + {c['continuation_tokens']} tokens",
                f"{r.value:,.0f} requests/s, {toks.value:,.0f} scored tokens/s")
        elif r.section == "attention" and r.unit == "tokens/s":
            c = r.config
            add(f"attention {c['implementation']}, forward + backward, batch {c['batch']} x "
                f"{c['seq']}, {c['heads']} heads of {c['head_dim']}, {c['dtype']}, causal",
                f"{r.value:,.0f} tokens/s, {1000 * r.median:.2f} ms/call")
        elif r.section == "attention" and r.unit == "x":
            add("cuDNN / XLA attention, forward + backward", format_value(r.value, r.unit),
                _verdict(r.value > 1.0, "> 1.00x"))
        elif r.section == "suite" and r.unit == "bytes":
            limit = r.config.get("bytes_limit")
            add(f"peak device memory, {r.name} process (allocator)",
                format_value(r.value, "bytes")
                + (f" of {format_value(limit, 'bytes')}" if limit else ""))
        elif r.section == "suite" and r.metric == "failed":
            add(f"{r.name}", f"**failed**: {r.config['error']}")
    walls = [r for r in results if r.section == "suite" and r.metric == "wall time"]
    wall = sum(r.value for r in walls)
    wall += tests[0].config.get("seconds", 0.0) if tests else 0.0
    limit = suite.max_wall_s
    if any(r.config.get("peers") for r in walls):   # --peers true: the peers' budgets too
        limit += sum(s.peer_budget_s for s in suite.steps)
    add("wall time: tests + steps, each process's start-up included", f"{wall:,.0f} s",
        _verdict(None if tiny else wall < limit, f"< {limit:.0f} s"))
    return "\n".join(lines) + "\n"


def _tests_line(rows: list[Result]) -> tuple[str, str, str]:
    """(figure, result, target) of the pytest run's rows."""
    by = {r.metric: r for r in rows}
    figure = f"`{rows[0].name}`"
    if "not run" in by:
        return figure, f"not run: {by['not run'].config['reason']}", _verdict(None, "all pass")
    if "passed" not in by:   # the run failed without a report
        return figure, f"failed: {by['failed'].config.get('reason')}", _verdict(False, "all pass")
    n = {m: int(by[m].value) for m in ("passed", "failed", "skipped")}
    text = f"{n['passed']} passed, {n['failed']} failed, {n['skipped']} skipped"
    if n["failed"]:
        text += ": " + "; ".join(by["failed"].config["failures"])[:300]
    elif n["skipped"] and not n["passed"]:
        text += f" ({by['skipped'].config['skipped'][0].split(': ', 1)[-1]})"
    ok = None if n["passed"] == n["failed"] == 0 else n["failed"] == 0   # all skipped: n/a
    return figure, text, _verdict(ok, "all pass")


if __name__ == "__main__":   # one step of run_steps: python -m gpt_jax.lab.bench.suite SPEC OUT
    child_main(*sys.argv[1:3])
