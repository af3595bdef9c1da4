"""study.py end to end (gpt_jax/lab/study/runner.py and gpt_jax/cli/study.py): every topic at
its tiny size into one report, the flags, Ctrl-C and an unwritable --out_dir. Each topic's own
claims are tested in its twin, tests/lab/test_study_<topic>.py."""
import json

import jax
import pytest

from conftest import run_cli
from gpt_jax.lab.study import TOPICS
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import init_params


@pytest.mark.slow
def test_study_tiny_on_the_corpus_writes_every_section_and_its_numbers(tmp_path, builtin_data):
    """study.py --tiny: each topic's section and figure in one report, report.json with the
    numbers, and the tiny strategies model cached beside the report, not in the checkout."""
    r = run_cli("study.py", "--tiny", "--out_dir", tmp_path, timeout=1500)
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "report.md").read_text()
    assert "unfinished" not in text and "unigram loss" in text
    numbers = json.loads((tmp_path / "report.json").read_text())
    assert set(TOPICS) <= set(numbers) and numbers["vocab"] == 1024
    for png in ("mlm", "probe", "norm", "tying", "strategies", "kvcache"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000, png
    assert (tmp_path / "model").is_dir()
    bad = run_cli("study.py", "--only", "nope")
    assert bad.returncode == 1 and bad.stderr.startswith("error:")


def test_study_flags_and_model_errors_name_study_flags(tmp_path):
    """--only '' ran everything; --model with sections that do not use it was dropped; a
    Hugging Face --model was told to "pass the right --out_dir" and a damaged one to call
    load_checkpoint(..., step=10): each is one line in study.py's own flags, before
    anything trains."""
    import gpt_jax
    from conftest import damage_params_file
    from gpt_jax.cli import study as cli
    from gpt_jax.errors import UserError

    def error(*argv):
        with pytest.raises(UserError) as e:
            cli.main(["--tiny", "--out_dir", str(tmp_path / "o"), *argv])
        assert "\n" not in str(e.value)
        return str(e.value)

    assert error("--only", "").startswith("--only takes a comma-separated subset of mlm, "
                                          "probe, norm, tying, strategies, kv; got no section")
    assert error("--only", "tying,kv", "--model", "out").startswith(
        "--model is the model of the strategies section, which --only tying,kv leaves out")
    assert error("--step", "3").startswith("--step picks a checkpoint of --model OUT_DIR")
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=512)
    params = init_params(cfg, jax.random.key(0))
    hf = str(tmp_path / "hf")
    gpt_jax.to_hf(params, cfg, hf)
    assert error("--model", hf, "--step", "3") == (
        f"--model {hf}: --step 3 applies to a train.py out_dir (it picks one of its "
        f"checkpoints), and {hf} is a Hugging Face directory, which loads without it: drop "
        f"--step 3")
    seen = {}   # a Hugging Face --model loads (it was "pass the right --out_dir"), up front
    monkey = pytest.MonkeyPatch()
    monkey.setattr(cli, "run_study", lambda *a, **k: seen.update(k))
    try:
        assert cli.main(["--tiny", "--model", hf, "--only", "strategies,kv"]) == 0
    finally:
        monkey.undo()
    assert seen["model"][1] == cfg and seen["only"] == ["strategies", "kv"]
    run = str(tmp_path / "run")
    for step in (5, 10):
        gpt_jax.save_checkpoint(run, step, params, cfg)
    damage_params_file(run, 10)
    msg = error("--model", run, "--only", "strategies")
    assert msg.startswith(f"--model {run}: checkpoint step 10 in ") and \
        msg.endswith("intact steps: 5 (pass --step 5)"), msg
    assert error("--model", str(tmp_path / "nothing")).startswith(
        f"--model {tmp_path / 'nothing'}: no directory")


def test_ctrl_c_keeps_the_topics_that_ended_and_exits_130(tmp_path, builtin_data):
    """Ctrl-C during study.py printed "interrupted" and then segfaulted in 2 of 3 runs (the
    interpreter's teardown under XLA's threads). A real SIGINT once a topic has ended: exit
    130, one last line naming what was kept, the report of the topics that ended."""
    import re
    from signals import Watched
    with Watched("study.py", "--tiny", "--only", "mlm,norm", "--out_dir", tmp_path) as w:
        w.wait_for(lambda w: b"mlm: done" in w.out + w.err)
        took = w.stop(timeout=60)
    text = w.err.decode()
    assert w.proc.returncode == 130, text[-2000:]
    assert took < 20, f"{took:.1f} s"
    lines = w.lines()
    assert re.fullmatch(rf"study.py stopped by SIGINT: kept mlm in "
                        rf"{re.escape(str(tmp_path / 'report.md'))}", lines[-1]), lines[-1]
    assert "Traceback" not in text and "interrupted" not in text
    report_md = (tmp_path / "report.md").read_text()
    assert "unfinished" in report_md
    assert json.loads((tmp_path / "report.json").read_text()).keys() >= {"mlm"}


def test_an_out_dir_study_py_cannot_write_is_one_line_before_anything_trains(tmp_path):
    """--out_dir that is a file, under a file, or read-only (issue 30 item 6): one line naming
    --out_dir, exit 1, before the first training step."""
    import subprocess
    import sys
    from conftest import ROOT, run_cli
    from file_modes import without_file_override
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        r = run_cli("study.py", "--tiny", "--only", "kv", "--out_dir", out, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"error: --out_dir {out} is ") and "training" not in r.stdout
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    r = subprocess.run([*without_file_override(), sys.executable, "study.py", "--tiny", "--only",
                        "kv", "--out_dir", str(ro / "report")], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "is not a writable directory (Permission denied)" in lines[0]
