"""prepare.py (and train.py on bad data) as a user runs them: one `error:` line, exit 1, and
the old prepared directory untouched by whatever failed."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli
from token_dirs import snapshot

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "16",
        "--batch_size", "2", "--eval_iters", "1", "--max_iters", "2"]


def assert_one_line_error(r, *fragments):
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.strip().count("\n") == 0, r.stderr
    for f in fragments:
        assert f in r.stderr, r.stderr


@pytest.fixture
def prepared(tmp_path):
    (tmp_path / "good.txt").write_text("plenty of words here " * 200)
    out = tmp_path / "tok"
    r = run_cli("prepare.py", "--input", tmp_path / "good.txt", "--out_dir", out)
    assert r.returncode == 0, r.stderr
    return out


def test_bad_options_and_inputs_keep_the_old_data(prepared, tmp_path):
    before = snapshot(prepared)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "random.txt").write_bytes(np.random.default_rng(1).bytes(5000))
    good = tmp_path / "good.txt"
    for args, fragment in [(["--input", good, "--num_threads", "-1"], "--num_threads"),
                           (["--input", good, "--batch_docs", "0"], "--batch_docs"),
                           (["--input", tmp_path / "empty.txt"], "holds no text"),
                           (["--input", tmp_path / "random.txt"], "not UTF-8 text")]:
        r = run_cli("prepare.py", *args, "--out_dir", prepared)
        assert_one_line_error(r, fragment)
        assert snapshot(prepared) == before


def test_bad_out_dir_is_one_line(tmp_path):
    (tmp_path / "good.txt").write_text("words " * 100)
    (tmp_path / "afile").write_text("precious")
    for out in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        r = run_cli("prepare.py", "--input", tmp_path / "good.txt", "--out_dir", out)
        assert_one_line_error(r, "afile")
    assert (tmp_path / "afile").read_text() == "precious"


# prepare.py with a SIGTERM delivered from inside its third tokenising batch: always mid-way,
# whatever the machine's speed (a signal sent from outside can arrive after prepare finished).
KILL_MID_PREPARE = """
import os, runpy, signal, sys, tiktoken
calls, encode = [0], tiktoken.Encoding.encode_ordinary_batch
def encode_then_kill(self, *a, **k):
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return encode(self, *a, **k)
tiktoken.Encoding.encode_ordinary_batch = encode_then_kill
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_sigterm_mid_prepare_keeps_the_old_data(prepared, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for i in range(40):
        (big / f"{i:03d}.txt").write_text(f"document {i} with quite a few words " * 200)
    before = snapshot(prepared)
    proc = subprocess.run([sys.executable, "-c", KILL_MID_PREPARE,
                           os.path.join(ROOT, "prepare.py"), "--input", str(big), "--out_dir",
                           str(prepared), "--batch_docs", "4", "--num_threads", "1"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert snapshot(prepared) == before        # old data intact, the staging files gone


def test_train_on_damaged_tokens_says_damaged(prepared, tmp_path):
    """Random bytes over train.bin make ids past the vocabulary: that used to be a NaN loss at
    step 0 blamed on --learning_rate."""
    arr = np.fromfile(prepared / "train.bin", np.uint16)
    arr[10:20] = 65535
    arr.tofile(prepared / "train.bin")
    r = run_cli("train.py", *TINY, "--data", prepared, "--out_dir", tmp_path / "o")
    assert_one_line_error(r, "token id 65535", "damaged", "prepare")
    assert "learning_rate" not in r.stderr
    with open(prepared / "train.bin", "ab") as f:
        f.write(b"\x01")
    r = run_cli("train.py", *TINY, "--data", prepared, "--out_dir", tmp_path / "o")
    assert_one_line_error(r, "odd size", "prepare")


def test_hf_rows_without_text(tmp_path):
    sys.path.insert(0, ROOT)
    import gpt_jax.cli.prepare as prepare_cli
    from gpt_jax.data.prepare import row_texts
    from gpt_jax.errors import DataError, UserError
    rows = [{"text": "a"}, {"content": "b"}]
    with pytest.raises(DataError, match="row 1 of ds has no text field 'text'.*content"):
        list(row_texts(rows, "ds", "text", 10))
    assert list(row_texts(rows, "ds", "text", 1)) == ["a"]
    with pytest.raises(UserError, match="--hf_max_docs"):
        prepare_cli.main(["--hf_dataset", "x", "--hf_max_docs", "-5",
                          "--out_dir", str(tmp_path / "o")])
    assert not os.path.exists(tmp_path / "o")


def test_hf_dataset_without_the_network_is_one_line(tmp_path, prepared, monkeypatch):
    """Offline, --hf_dataset ended in a ConnectionError traceback; now one line saying it
    needs the network and what to pass instead. A stream that breaks off mid-way is one line
    too, and the old prepared data stays as it was."""
    r = run_cli("prepare.py", "--hf_dataset", "Skylion007/openwebtext", "--hf_max_docs", "5",
                "--out_dir", tmp_path / "owt", env={"HF_DATASETS_OFFLINE": "1"})
    assert_one_line_error(r, "--hf_dataset Skylion007/openwebtext streams from the Hugging "
                             "Face Hub, which cannot be reached", "HF_HUB_OFFLINE=1",
                          "pass --input PATH")
    datasets = pytest.importorskip("datasets")
    sys.path.insert(0, ROOT)
    import gpt_jax.cli.prepare as prepare_cli
    from gpt_jax.errors import DataError

    def stream(*args, **kwargs):          # two rows, then the connection drops
        yield {"text": "first words " * 50}
        yield {"text": "more words " * 50}
        raise ConnectionError("Connection reset by peer")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: stream())
    before = snapshot(prepared)
    with pytest.raises(DataError, match="stream from the Hugging Face Hub broke off "
                                        r"\(Connection reset by peer\); nothing was replaced"):
        prepare_cli.main(["--hf_dataset", "x/y", "--hf_max_docs", "5",
                          "--out_dir", str(prepared)])
    assert snapshot(prepared) == before
