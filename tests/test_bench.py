import json

from conftest import run_cli

ROW_KEYS = {"section", "name", "config", "metric", "value", "unit", "median", "min", "max",
            "repeats", "compile_s"}


def test_bench_smoke_writes_valid_json(tmp_path):
    out = tmp_path / "bench.json"
    r = run_cli("bench.py", "--tiny", "--repeats", "1", "--only", "machine,forward",
                "--preset", "gpt2-tiny", "--batch_size", "2", "--seq_len", "16",
                "--json", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert {"platform", "device_kind", "device_count", "jax", "jaxlib", "cpu"} <= set(doc["machine"])
    rows = doc["results"]
    assert {r["section"] for r in rows} == {"machine", "forward"}
    for row in rows:
        assert set(row) == ROW_KEYS
        assert row["value"] > 0
    fwd = [r for r in rows if r["section"] == "forward" and r["unit"] == "tokens/s"][0]
    assert fwd["config"] == {"preset": "gpt2-tiny", "batch": 2, "seq": 16, "dtype": "float32"}
    assert fwd["compile_s"] > 0 and fwd["min"] <= fwd["median"] <= fwd["max"]
    assert "tokens/s" in r.stdout  # the printed table


def test_bench_bad_input_is_one_line(tmp_path):
    r = run_cli("bench.py", "--tiny", "--only", "nonsense")
    assert r.returncode == 1 and r.stderr.strip().startswith("error: unknown bench section")
    r = run_cli("bench.py", "--preset", "gpt5")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: unknown preset 'gpt5'")
