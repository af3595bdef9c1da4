import json
import os
import shutil
import sys

from conftest import run_cli

from gpt_jax.generation.loop import segment_lengths
from gpt_jax.lab.bench.cache import CALLS

ROW_KEYS = {"section", "name", "config", "metric", "value", "unit", "median", "min", "max",
            "repeats", "compile_s"}


def test_bench_smoke_writes_valid_json(tmp_path):
    """Every section on tiny sizes, one repeat: the harness, the JSON schema, the chart."""
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    # --compile_peers false: torch.compile takes minutes here (tests/lab/test_bench_compiled.py
    # checks those peers); what stays is the row that says they were left out, and why
    proc = run_cli("bench.py", "--tiny", "--repeats", "1", "--preset", "gpt2-tiny",
                   "--batch_size", "2", "--seq_len", "16", "--json", out, "--plot", png,
                   "--compile_peers", "false", timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert {"platform", "device_kind", "device_count", "jax", "jaxlib", "cpu"} <= set(doc["machine"])
    rows = doc["results"]
    assert {r["section"] for r in rows} == {"machine", "forward", "train", "decode", "cache",
                                            "speculative", "scale", "eval", "serve"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = {r["name"] for r in rows}
    # The peers (torch + transformers are in the test extra) and the ratios against them.
    assert {"HF PyTorch generate b1", "ours / HF PyTorch b8", "tiny gpt_jax / HF torch",
            "ours op-by-op (jit disabled) b1"} <= names
    assert all(r["value"] > 0 for r in rows if r["unit"] == "x")
    assert "tiny gpt_jax / HF torch (CPU time)" in names
    # serve: beam search against HF PyTorch, and TTFT / TPOT for both
    assert {"ours / HF PyTorch beam search 4 beams b1", "ours time to first token b1",
            "HF PyTorch time per output token b1", "ours prefill 8 tokens b1"} <= names
    hf_beam = [r for r in rows if r["name"] == "HF PyTorch beam search 4 beams b1"][0]
    assert hf_beam["config"]["best_tokens_equal_ours"] == 1.0
    # speculative decoding: every proposer's greedy tokens equal our plain greedy ones
    spec = [r for r in rows if r["section"] == "speculative" and r["unit"] == "tokens/s"]
    assert {"ours lookup b1", "ours draft b1", "HF lookup b1", "HF draft b1"} <= {
        r["name"] for r in spec}
    assert all(r["config"]["greedy_tokens_equal_ours"] == 1.0 for r in spec)
    # cache: the segmented cache's and the kernel's tokens equal the whole cache's, every call
    # ran, the kernel with it built (CI has a compiler), and the per-step shares are there
    cache = [r for r in rows if r["section"] == "cache" and r["unit"] == "tokens/s"]
    assert len(cache) == 4 and all(r["config"]["tokens_equal_whole_cache"] for r in cache)
    P, N = cache[0]["config"]["prompt"], cache[0]["config"]["new_tokens"]
    assert [(r["config"]["attention"], r["config"]["cache_lengths"]) for r in cache] == [
        (impl, list(segment_lengths(P, P + N - 1, n))) for impl, n in CALLS.values()]
    assert [len(r["config"]["cache_lengths"]) for r in cache] == [1, 3, 3, 3]
    assert cache[0]["config"]["kernel"] == (shutil.which(os.environ.get("CXX", "c++"))
                                            is not None)
    assert {"step time kernel save (1 - kernel / whole)", "decode step, whole cache"} <= names
    # the cost of the training-health metrics: step time with / without them (gpt_jax/train/health.py)
    assert "health metrics step-time ratio (with / without)" in names
    # No --flax_python: the HF Flax peer is skipped, and a note says how to time it.
    assert "--flax_python" in proc.stderr and not any("Flax" in n for n in names)
    skipped = {(r["section"], r["name"]): r["config"]["reason"] for r in rows
               if r["unit"] == "skip"}
    assert set(skipped) == {("train", "tiny torch.compile peers"),
                            ("decode", "HF PyTorch static cache + torch.compile generate b1"),
                            ("decode", "HF PyTorch static cache + torch.compile generate b8"),
                            ("serve", "HF PyTorch static cache + torch.compile generate b1")}
    assert all("--compile_peers false" in reason for reason in skipped.values())
    assert "(turned off (--compile_peers false))" in proc.stdout   # the table says why
    for row in rows:
        assert set(row) == ROW_KEYS
        # the cache section's shares are differences of timings: noise can take them below 0
        assert row["value"] > 0 or (row["section"], row["unit"]) == ("cache", "fraction")
    fwd = [r for r in rows if r["section"] == "forward" and r["unit"] == "tokens/s"][0]
    assert fwd["config"] == {"preset": "gpt2-tiny", "batch": 2, "seq": 16, "dtype": "float32"}
    assert fwd["compile_s"] > 0 and fwd["min"] <= fwd["median"] <= fwd["max"]
    assert "tokens/s" in proc.stdout  # the printed table
    scale = [r for r in rows if r["section"] == "scale"]
    assert {"plain", "remat", "scan_layers", "scan_layers+remat"} <= {
        r["name"].split(" ", 1)[1] for r in scale if " " in r["name"]}
    assert any(r["unit"] == "bytes" for r in scale)
    assert all(r["compile_s"] > 0 for r in scale if r["unit"] == "tokens/s")
    # eval: ours against lm-eval's HF backend (lm-eval is in the eval extra, which CI installs),
    # on the same requests: the answers agree, and the ratio rows are there
    ev = {(r["name"], r["metric"]): r for r in rows if r["section"] == "eval"}
    for shape in ("hellaswag", "lambada"):
        ours = ev[(f"{shape} gpt_jax loglikelihood b4", "requests/s")]
        peer = ev[(f"{shape} lm-eval HF backend b4", "scored tokens/s")]
        assert ours["compile_s"] > 0 and peer["compile_s"] is None
        assert peer["config"]["max_abs_logp_diff_vs_ours"] < 1e-3
        assert ev[(f"{shape} gpt_jax / lm-eval HF b4", "requests/s ratio")]["unit"] == "x"


def test_bench_bad_input_is_one_line(tmp_path):
    r = run_cli("bench.py", "--tiny", "--only", "nonsense")
    assert r.returncode == 1 and r.stderr.strip().startswith("error: unknown bench section")
    r = run_cli("bench.py", "--preset", "gpt5")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown preset 'gpt5'")


def assert_refused_before_running(r, *fragments):
    """One `error:` line, exit 1, and no section started (the check came first)."""
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "[bench] section" not in r.stderr and r.stdout == ""
    for f in fragments:
        assert f in lines[0], lines[0]


def test_bench_refuses_bad_flags_before_running(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    tiny = ("--tiny", "--only", "forward", "--repeats", "1", "--batch_size", "1")
    # --json / --plot that cannot be written: said at once, not after the benchmarks
    assert_refused_before_running(run_cli("bench.py", *tiny, "--json", blocker / "out.json"),
                                  "--json", "is not a directory")
    assert_refused_before_running(run_cli("bench.py", *tiny, "--json", tmp_path),
                                  "--json", "is a directory")
    assert_refused_before_running(run_cli("bench.py", *tiny, "--plot",
                                          tmp_path / "missing" / "b.png"),
                                  "--plot", "does not exist")
    # --seq_len past the model's block_size was silently cut to it
    assert_refused_before_running(run_cli("bench.py", *tiny, "--seq_len", "4096"),
                                  "--seq_len 4096 exceeds gpt2-tiny's block_size 128")
    for flag, value in (("--warmup", "-1"), ("--repeats", "0"), ("--batch_size", "0"),
                        ("--seq_len", "0"), ("--torch_threads", "0")):
        assert_refused_before_running(run_cli("bench.py", *tiny, flag, value), flag)
    # booleans are true/false (and yes/no, 1/0) like the other CLIs
    assert_refused_before_running(run_cli("bench.py", *tiny, "--peers", "maybe"),
                                  "--peers", "expected true or false")
    assert_refused_before_running(run_cli("bench.py", "--only", ","), "unknown bench section")
    # --flax_python that is no python, or one without transformers<5's Flax GPT-2
    assert_refused_before_running(run_cli("bench.py", *tiny, "--flax_python",
                                          tmp_path / "missing"),
                                  "--flax_python", "not an executable file")
    try:
        from transformers.models.gpt2 import modeling_flax_gpt2  # noqa: F401
    except ImportError:   # as in the test environment (transformers >= 5)
        assert_refused_before_running(run_cli("bench.py", *tiny, "--flax_python",
                                              sys.executable),
                                      "--flax_python", "cannot import HF Flax GPT-2")
    # a forward batch far past the memory: refused with the estimate (it was killed by the OS)
    assert_refused_before_running(run_cli("bench.py", "--only", "forward", "--preset", "gpt2",
                                          "--batch_size", "100000"),
                                  "batch 100000 x seq 1024 of gpt2 needs about", "GiB")


def test_bench_boolean_flags_and_default_seq_len(tmp_path):
    """--peers no / --tiny true parse as booleans; without --seq_len the forward section runs
    the model's block_size (a --tiny run needed --seq_len to avoid 1024 > 128 before)."""
    out = tmp_path / "b.json"
    r = run_cli("bench.py", "--tiny", "true", "--peers", "no", "--only", "forward",
                "--repeats", "1", "--batch_size", "1", "--json", out, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["results"]
    fwd = [row for row in rows if row["section"] == "forward" and row["unit"] == "tokens/s"]
    assert fwd[0]["config"]["seq"] == 128
    assert not [f for f in os.listdir(tmp_path) if f != "b.json"]   # no temp files left


def test_bench_device_that_is_not_here_is_one_line():
    """--device gpu on a machine without one ran on the CPU (JAX_PLATFORMS was set after jax
    had read it) and reported CPU figures; now it says the backend is missing."""
    import jax
    platforms = {d.platform for d in jax.devices()}
    for device, platform in (("gpu", "gpu"), ("tpu", "tpu")):
        if platform in platforms:
            continue
        assert_refused_before_running(
            run_cli("bench.py", "--tiny", "--only", "machine", "--device", device),
            f"--device {device}: no {device} backend is available here")


def test_peers_are_left_out_when_ours_run_on_an_accelerator(monkeypatch):
    """The Hugging Face peers run where ours run: with torch's CPU build, on a GPU they are left
    out (bench.py once put our GPU figures over their CPU ones in a ratio row)."""
    import jax
    from gpt_jax.lab.bench.harness import Context
    from gpt_jax.lab.bench.peers import have_peers
    assert have_peers(Context(), "train")          # torch and transformers: the test extra
    # the GPU suite's --peers true: on a GPU only
    assert not have_peers(Context(options={"peers": "accelerator"}), "train")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not have_peers(Context(), "train")   # this torch is a CPU build: no CUDA
    assert not have_peers(Context(options={"peers": False}), "train")


# -- bench.py --suite gpu ------------------------------------------------------------------------

SUITE_SECTIONS = {"tests", "machine", "attention", "train", "decode", "loglikelihood", "suite"}


def marker_lines(name="gpu"):
    return f"\n<!-- {name}-table:start -->\n", f"\n<!-- {name}-table:end -->\n"


def outside_markers(text):
    start, end = marker_lines()
    return text[:text.index(start)], text[text.index(end):]


def inside_markers(text):
    start, end = marker_lines()
    return text.split(start)[1].split(end)[0]


def test_readme_has_one_gpu_table_that_says_it_was_not_run():
    """The table --suite gpu fills: its markers once each, and until then a line saying no GPU
    has run it (not figures from elsewhere)."""
    from conftest import ROOT
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    start, end = marker_lines()
    assert text.count(start) == text.count(end) == 1
    inside = inside_markers(text)
    assert "Not yet run on a GPU" in inside


def test_gpu_suite_plumbing_on_cpu(tmp_path):
    """The first-GPU command on tiny sizes on the CPU: every step ran in its own process and
    reported its rows; the JSON holds them with the machine that measured; the table went
    between the markers of a copy of README.md and nothing else in it changed."""
    from conftest import ROOT
    readme = os.path.join(ROOT, "README.md")
    original = open(readme, encoding="utf-8").read()
    copy, out = tmp_path / "README.md", tmp_path / "gpu.json"
    copy.write_text(original, encoding="utf-8")
    r = run_cli("bench.py", "--suite", "gpu", "--device", "cpu", "--tiny", "--repeats", "1",
                "--json", out, "--table", copy, timeout=900)
    assert r.returncode == 0, r.stderr
    assert open(readme, encoding="utf-8").read() == original     # the real one untouched
    doc = json.loads(out.read_text())
    assert doc["machine"]["platform"] == "cpu"
    rows = doc["results"]
    for row in rows:
        assert set(row) == ROW_KEYS
    assert {row["section"] for row in rows} == SUITE_SECTIONS
    assert not [row for row in rows if row["metric"] == "failed" and row["section"] == "suite"]
    by = {(row["section"], row["name"], row["metric"]): row for row in rows}
    tests = {m: by[("tests", "pytest -m gpu tests/lab/test_gpu.py", m)] for m in
             ("passed", "failed", "skipped")}
    # Without a GPU every gpu test is collected and skips, saying why.
    assert tests["passed"]["value"] == tests["failed"]["value"] == 0
    assert tests["skipped"]["value"] >= 5
    assert all("needs" in s and "GPU" in s for s in tests["skipped"]["config"]["skipped"])
    # cuDNN runs only on a GPU: XLA's attention alone, and no ratio.
    att = by[("attention", "xla attention", "tokens/s")]
    assert att["config"]["implementation"] == "xla" and att["config"]["dtype"] == "bfloat16"
    assert att["value"] > 0 and att["compile_s"] > 0
    assert not [row for row in rows if row["section"] == "attention" and row["unit"] == "x"]
    train = [row for row in rows if row["section"] == "train" and row["unit"] == "tokens/s"]
    assert [t["config"]["dtype"] for t in train] == ["bfloat16"]   # no float32 variant
    assert ("train", "tiny gpt_jax bfloat16", "MFU (vs measured matmul)") in by  # the peak
    decode = [row for row in rows if row["section"] == "decode" and row["unit"] == "tokens/s"
              and row["name"].startswith("ours cached")]
    assert sorted(d["config"]["batch"] for d in decode) == [1, 8]
    assert {d["config"]["dtype"] for d in decode} == {"bfloat16"}
    assert not [row for row in rows if "uncached" in row["name"] or "HF" in row["name"]]
    ll = [row for row in rows if row["section"] == "loglikelihood"]
    assert {row["metric"] for row in ll} == {"requests/s", "scored tokens/s"}
    assert all(row["value"] > 0 for row in ll)
    walls = [row for row in rows if row["section"] == "suite" and row["metric"] == "wall time"]
    assert [w["name"] for w in walls] == ["machine", "attention", "train", "decode",
                                          "loglikelihood"]
    assert all(0 < w["value"] < w["config"]["budget_s"] for w in walls)
    # The table: between the markers, the rest of the file byte for byte.
    text = copy.read_text(encoding="utf-8")
    assert outside_markers(text) == outside_markers(original)
    inside = inside_markers(text)
    assert "Not yet run on a GPU" not in inside and "**Plumbing run" in inside
    assert "| figure | result | target |" in inside
    for figure in ("`pytest -m gpu tests/lab/test_gpu.py` | 0 passed, 0 failed",
                   "cuDNN not run: needs a GPU", "| attention xla, forward + backward",
                   "| train tiny, batch 2 x 64, bfloat16, xla attention |",
                   "| decode gpt2-tiny, bfloat16, batch 8", "| loglikelihood gpt2-tiny lambada-like",
                   "| wall time: tests + steps"):
        assert figure in inside, figure
    assert inside.strip() in r.stdout.replace("\r", "")       # the same table on stdout


def test_gpu_suite_refuses_what_it_cannot_do_before_running(tmp_path):
    """Sizes are the suite's own; --table needs --suite, and a file without the markers is
    refused at once, not after minutes of benchmarks."""
    assert_refused_before_running(run_cli("bench.py", "--suite", "gpu", "--preset", "gpt2",
                                          "--dtype", "float32"),
                                  "--suite gpu runs fixed sizes: leave out --preset, --dtype")
    assert_refused_before_running(run_cli("bench.py", "--table", tmp_path / "t.md"),
                                  "--table writes a suite's table: give --suite too")
    plain = tmp_path / "plain.md"
    plain.write_text("# no markers here\n")
    r = run_cli("bench.py", "--suite", "gpu", "--device", "cpu", "--tiny", "--table", plain)
    assert_refused_before_running(r, f"--table {plain} exists but does not hold the lines",
                                  "<!-- gpu-table:start -->")
    assert plain.read_text() == "# no markers here\n"


def test_suite_budgets_fit_in_its_wall_time():
    """Each step is killed at its budget, so the budgets bound the whole run: they must fit in
    the 8 minutes the gpu suite promises, with room for this process's start-up."""
    from gpt_jax.lab.bench.suite import SUITES, resolve
    gpu = SUITES["gpu"]
    assert gpu.max_wall_s == 480
    assert gpu.tests_budget_s + sum(s.budget_s for s in gpu.steps) <= gpu.max_wall_s - 15
    for step in gpu.steps:
        assert callable(resolve(step.section)), step.section


def test_suite_step_failures_are_rows_and_the_rest_still_run(monkeypatch):
    """A step that raises and one that runs past its budget each become a failed row with the
    reason; the steps after them still run, and a peak measured by one step reaches the next
    (its own process) with the suite's options and sizes."""
    from conftest import ROOT
    import gpt_jax.lab.bench.suite as suite
    from gpt_jax.lab.bench.harness import Context
    steps = (suite.Step("suite_steps:broken", 60), suite.Step("suite_steps:sleepy", 8),
             suite.Step("suite_steps:measures", 60, {"a": 1}),
             suite.Step("suite_steps:reads", 60, {"b": 2}))
    monkeypatch.setitem(suite.SUITES, "fake", suite.Suite(
        preset="gpt2", dtype="bfloat16", tests=(), tests_budget_s=1, steps=steps,
        min_mfu=0.5, max_wall_s=200))
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "tests", "support")}
    ctx = Context(repeats=1, tiny=True, dtype="bfloat16", options={"peers": False})
    rows, machine = suite.run_steps("fake", ctx, "cpu", env, log=lambda *a, **k: None)
    failed = {r.name: r for r in rows if r.metric == "failed"}
    assert set(failed) == {"suite_steps:broken", "suite_steps:sleepy"}
    assert failed["suite_steps:broken"].unit == "error"
    assert "RuntimeError: this step is broken on purpose" in \
        failed["suite_steps:broken"].config["error"]
    assert failed["suite_steps:sleepy"].config["error"] == "ran past its budget of 8 s"
    walls = {r.name: r.value for r in rows if r.metric == "wall time"}
    assert list(walls) == [s.section for s in steps]
    assert 8 <= walls["suite_steps:sleepy"] < 30          # killed, not waited for
    got = {r.name: r for r in rows if r.section == "fake"}
    assert got["measures"].config == {"option": 1}
    reads = got["reads"]
    assert reads.value == 123.0                            # the earlier step's peak
    assert reads.config == {"options": {"peers": False, "b": 2}, "tiny": True,
                            "dtype": "bfloat16"}
    assert machine["platform"] == "cpu"
    # The table states the failures.
    table = suite.markdown_table("fake", rows, machine, "python bench.py --suite fake", True)
    assert "| suite_steps:sleepy | **failed**: ran past its budget of 8 s |" in table


def gpu_rows(mfu_value, cudnn_tps, xla_tps):
    """Rows as an H100 run would give them (the figures are made up: they test the table)."""
    from gpt_jax.lab.bench.harness import Result
    conf = {"n_layer": 12, "batch": 16, "seq": 1024, "dtype": "bfloat16"}
    rows = []
    for label, tps in (("cudnn", cudnn_tps), ("xla", xla_tps)):
        name = f"gpt2-124m bfloat16 {label} attn"
        rows += [Result("train", name, "tokens/s", tps, "tokens/s",
                        {**conf, "attention": label}, median=16384 / tps, min=0.1, max=0.1,
                        repeats=3, compile_s=20.0),
                 Result("train", name, "MFU (vs datasheet peak)", mfu_value * tps / cudnn_tps,
                        "fraction", {**conf, "peak_flops": 989e12})]
    rows.append(Result("train", "gpt2-124m cudnn / xla attention", "tokens/s ratio",
                       cudnn_tps / xla_tps, "x", conf))
    rows.append(Result("suite", "train", "peak bytes in use (allocator)", 30 * 2**30, "bytes",
                       {"bytes_limit": 100 * 2**30, "peak_bytes_in_use": 30 * 2**30}))
    rows.append(Result("suite", "train", "wall time", 100.0, "s", {"budget_s": 150}))
    return rows


def test_gpu_table_states_each_target_met_or_not(tmp_path):
    """The verdicts come from the figures: MFU against 50% of the datasheet peak, cuDNN
    against XLA, the wall time against 480 s; and rewriting the table twice gives one table."""
    from gpt_jax.lab.bench.report import write_table
    from gpt_jax.lab.bench.suite import markdown_table
    machine = {"platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3", "device_count": 1,
               "jax": "0.10.2"}
    good = markdown_table("gpu", gpu_rows(0.55, 400000, 300000), machine, "cmd", False)
    bad = markdown_table("gpu", gpu_rows(0.35, 300000, 400000), machine, "cmd", False)
    assert "Plumbing run" not in good and "NVIDIA H100 80GB HBM3 x 1 (gpu)" in good
    assert "MFU 55.0% of 989 TFLOP/s (datasheet) | MFU >= 50%: **met** |" in good
    assert "MFU 35.0% of 989 TFLOP/s (datasheet) | MFU >= 50%: **not met** |" in bad
    assert "| cuDNN / XLA attention, train step | 1.33x | > 1.00x: **met** |" in good
    assert "| cuDNN / XLA attention, train step | 0.75x | > 1.00x: **not met** |" in bad
    assert "30,720.0 MiB of 102,400.0 MiB" in good
    assert "| 100 s | < 480 s: **met** |" in good
    readme = tmp_path / "README.md"
    # prose that names the markers inline (README's does) is not where the table goes
    prose = "between `<!-- gpu-table:start -->` and `<!-- gpu-table:end -->`\n"
    readme.write_text("# x\n\n<!-- gpu-table:start -->\nNot yet run\n<!-- gpu-table:end -->\n"
                      + prose)
    write_table(str(readme), "gpu", bad)
    write_table(str(readme), "gpu", good)
    text = readme.read_text()
    assert text == f"# x\n\n<!-- gpu-table:start -->\n{good}<!-- gpu-table:end -->\n{prose}"


def test_flax_python_that_is_no_python_and_gpu_suite_without_a_gpu_are_one_line():
    """--flax_python /bin/ls was told to install transformers there; --suite gpu on a machine
    without a GPU ran the 124M recipe on the CPU, asked for 43 GB and passed a child's
    traceback up. Both are refused before anything runs, saying what to do instead."""
    tiny = ("--tiny", "--only", "train", "--repeats", "1")
    assert_refused_before_running(run_cli("bench.py", *tiny, "--flax_python", "/bin/ls"),
                                  "--flax_python /bin/ls is not a Python interpreter")
    import jax
    if jax.default_backend() == "cpu":
        assert_refused_before_running(
            run_cli("bench.py", "--suite", "gpu", env={"JAX_PLATFORMS": "cpu"}),
            "--suite gpu needs a GPU, and jax finds none here",
            "python bench.py --suite gpu --device cpu --tiny")


def test_serve_streaming_rows():
    """Section serve's streaming rows on tiny sizes: streamed tokens equal unstreamed ones,
    and a batch whose rows stop after 10 tokens stops there (the early-exit rows)."""
    import gpt_jax.lab.bench.streaming as streaming
    from gpt_jax.lab.bench.harness import Context
    rows = {r.name: r for r in streaming.run(Context(tiny=True, repeats=1, warmup=0))}
    assert {"streamed / unstreamed b1", "streamed / unstreamed b8",
            "early exit / all 64 tokens", "early exit / 10 tokens"} <= set(rows)
    assert rows["ours greedy streamed b8"].config["tokens_equal_unstreamed"] == 1.0
    early = rows["early exit: 4 rows stop after 10 of 64"]
    assert early.config["rows_stopped_after"] == [10] * 4
    assert all(r.value > 0 for r in rows.values())
