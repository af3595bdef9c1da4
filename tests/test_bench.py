import json

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
