import json
import os
import sys

from conftest import run_cli

ROW_KEYS = {"section", "name", "config", "metric", "value", "unit", "median", "min", "max",
            "repeats", "compile_s"}


def test_bench_smoke_writes_valid_json(tmp_path):
    """Every section on tiny sizes, one repeat: the harness, the JSON schema, the chart."""
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = run_cli("bench.py", "--tiny", "--repeats", "1", "--preset", "gpt2-tiny",
                   "--batch_size", "2", "--seq_len", "16", "--json", out, "--plot", png,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert {"platform", "device_kind", "device_count", "jax", "jaxlib", "cpu"} <= set(doc["machine"])
    rows = doc["results"]
    assert {r["section"] for r in rows} == {"machine", "forward", "train", "decode", "scale"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = {r["name"] for r in rows}
    # The peers (torch + transformers are in the test extra) and the ratios against them.
    assert {"HF PyTorch generate b1", "ours / HF PyTorch b8", "tiny gpt_jax / HF torch",
            "ours op-by-op (jit disabled) b1"} <= names
    assert all(r["value"] > 0 for r in rows if r["unit"] == "x")
    assert "tiny gpt_jax / HF torch (CPU time)" in names
    # No --flax_python: the HF Flax peer is skipped, and a note says how to time it.
    assert "--flax_python" in proc.stderr and not any("Flax" in n for n in names)
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["value"] > 0
    fwd = [r for r in rows if r["section"] == "forward" and r["unit"] == "tokens/s"][0]
    assert fwd["config"] == {"preset": "gpt2-tiny", "batch": 2, "seq": 16, "dtype": "float32"}
    assert fwd["compile_s"] > 0 and fwd["min"] <= fwd["median"] <= fwd["max"]
    assert "tokens/s" in proc.stdout  # the printed table
    scale = [r for r in rows if r["section"] == "scale"]
    assert {"plain", "remat", "scan_layers", "scan_layers+remat"} <= {
        r["name"].split(" ", 1)[1] for r in scale if " " in r["name"]}
    assert any(r["unit"] == "bytes" for r in scale)
    assert all(r["compile_s"] > 0 for r in scale if r["unit"] == "tokens/s")


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
