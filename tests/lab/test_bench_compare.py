"""bench.py --compare: each row of this run against a saved one, flagged only where it lost more
than the runs' own spread."""
import json

import pytest

from conftest import run_cli
from gpt_jax.errors import UserError
from gpt_jax.lab.bench.compare import compare, format_changes, load_results
from gpt_jax.lab.bench.harness import Result
from gpt_jax.lab.bench.report import write_json


def timed(name, value, spread, unit="tokens/s", metric="train step tokens/s"):
    """A throughput row whose repeats moved by `spread` of their median."""
    median = 1.0 / value
    return Result("train", name, metric, value, unit, median=median,
                  min=median * (1 - spread / 2), max=median * (1 + spread / 2), repeats=5)


def test_a_loss_beyond_the_spread_is_flagged_and_one_inside_it_is_not():
    old = [timed("a", 1000, 0.02), timed("b", 1000, 0.10), timed("c", 1000, 0.02)]
    new = [timed("a", 900, 0.02), timed("b", 950, 0.02), timed("c", 1100, 0.02),
           timed("new row", 5, 0.01)]
    changes, unmatched = compare(new, old)
    by = {c.new.name: c for c in changes}
    assert by["a"].better == pytest.approx(0.9) and by["a"].slower          # 10% > 2%
    assert by["b"].better == pytest.approx(0.95) and not by["b"].slower     # 5% < old's 10%
    assert by["c"].better == pytest.approx(1.1) and not by["c"].slower
    assert [r.name for r in unmatched] == ["new row"]
    text = format_changes(changes, unmatched, "old.json")
    assert text.count("SLOWER") == 1 and "3 rows compared, 1 slower" in text


def test_times_and_bytes_are_better_lower_and_derived_rows_are_never_flagged():
    old = [Result("scale", "m", "peak memory", 100.0, "bytes"),
           Result("train", "r", "ratio", 2.0, "x"),
           timed("t", 1 / 0.010, 0.01, unit="ms", metric="TPOT")]
    new = [Result("scale", "m", "peak memory", 200.0, "bytes"),
           Result("train", "r", "ratio", 1.0, "x"),
           timed("t", 1 / 0.020, 0.01, unit="ms", metric="TPOT")]
    by = {c.new.name: c for c in compare(new, old)[0]}
    assert by["m"].better == pytest.approx(0.5) and not by["m"].slower      # no spread
    assert by["r"].better == pytest.approx(0.5) and not by["r"].slower
    assert by["t"].better == pytest.approx(2.0)                             # value is in ms


def test_a_file_that_is_no_bench_json_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    for content, words in (("{", "not a bench JSON"), ("[1, 2]", "no \"results\" list"),
                           ('{"results": [{"x": 1}]}', "not a bench result")):
        bad.write_text(content)
        with pytest.raises(UserError, match=words):
            load_results(str(bad))
    with pytest.raises(UserError, match="cannot read it"):
        load_results(str(tmp_path / "missing.json"))
    good = tmp_path / "good.json"
    write_json(str(good), [timed("a", 10, 0.1)])
    assert load_results(str(good))[0].name == "a"


def test_bench_compare_through_the_cli(tmp_path):
    saved = tmp_path / "old.json"
    r = run_cli("bench.py", "--tiny", "--repeats", "2", "--only", "machine", "--json", saved)
    assert r.returncode == 0, r.stderr
    r = run_cli("bench.py", "--tiny", "--repeats", "2", "--only", "machine", "--compare", saved)
    assert r.returncode == 0, r.stderr
    rows = len([x for x in json.loads(saved.read_text())["results"] if x["unit"] != "tests"])
    assert f"{rows} rows compared" in r.stdout and f"against {saved}" in r.stdout
    r = run_cli("bench.py", "--tiny", "--compare", tmp_path / "nothing.json")
    assert r.returncode == 1 and r.stderr.startswith("error: --compare") and "Traceback" not in r.stderr
    r = run_cli("bench.py", "--suite", "gpu", "--compare", saved)
    assert r.returncode == 1 and "--compare goes with a plain run" in r.stderr
