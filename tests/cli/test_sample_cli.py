"""sample.py end to end on a tiny checkpoint: output format and one-line errors."""
import os
import subprocess
import sys
import time

import jax
import pytest

from conftest import ROOT

import gpt_jax

SEP = "---------------"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("out")
    cfg = gpt_jax.GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=512)
    gpt_jax.save_checkpoint(str(d), 7, gpt_jax.init_params(cfg, jax.random.key(0)), cfg)
    return str(d)


def sample(*args, env=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(r, *fragments):
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    assert r.stdout == ""


def test_samples_go_to_stdout_one_per_separator(out_dir):
    r = sample(f"--init_from={out_dir}", "--start", "a b", "--num_samples", "3",
               "--max_new_tokens=8", "--temperature", "0.9", "--top_k", "20", "--top_p=0.9",
               "--seed", "3")
    assert r.returncode == 0, r.stderr
    chunks = r.stdout.split(SEP + "\n")
    assert chunks[-1] == "" and len(chunks) == 4
    assert all(c.startswith("a b") for c in chunks[:3])
    assert "tokens/s" in r.stderr and "compile" in r.stderr
    again = sample(f"--init_from={out_dir}", "--start", "a b", "--num_samples", "3",
                   "--max_new_tokens=8", "--temperature", "0.9", "--top_k", "20",
                   "--top_p=0.9", "--seed", "3")
    assert again.stdout == r.stdout  # the seed fixes the samples


def test_errors_are_one_line(out_dir, tmp_path):
    assert_one_line_error(sample("--init_from", str(tmp_path / "nothing")), "nothing")
    assert_one_line_error(sample("--init_from", out_dir, "--start", "a " * 30,
                                 "--max_new_tokens", "8"), "block_size 32", "8")
    assert_one_line_error(sample("--init_from", out_dir, "--start",
                                 f"FILE:{tmp_path / 'missing.txt'}"), "missing.txt")
    assert_one_line_error(sample("--init_from", out_dir, "--start", "Hello world"),
                          "vocab")  # ids >= 512 in a tiny model's vocabulary
    assert_one_line_error(sample("--init_from", out_dir, "--temperature=-1"), "temperature")
    assert_one_line_error(sample("--init_from", out_dir, "--num_samples", "x"), "num_samples")


def test_more_bad_input_is_one_line(out_dir):
    # A prompt longer than block_size itself: numpy's "could not broadcast" traceback before.
    assert_one_line_error(sample("--init_from", out_dir, "--start", "a " * 40,
                                 "--max_new_tokens", "4"), "prompt length", "block_size 32")
    assert_one_line_error(sample("--init_from", out_dir, "--seed", "99999999999999999999"),
                          "--seed", "4294967295")
    assert_one_line_error(sample("--init_from", out_dir, "--seed", "-1"), "--seed")
    assert_one_line_error(sample("--init_from", out_dir, "--temperature", "nan"), "temperature")
    assert_one_line_error(sample("--init_from", out_dir, "--max_new_tokens", "10" * 10),
                          "block_size 32")
    assert_one_line_error(sample("--init_from", out_dir, "--batch_size", "0"), "--batch_size")


def test_compressed_decode_weights_flag(out_dir):
    r = sample("--init_from", out_dir, "--start", "a b", "--num_samples", "2",
               "--max_new_tokens", "6", "--temperature", "0", "--weights", "int8")
    assert r.returncode == 0 and r.stdout.count(SEP) == 2, r.stderr
    assert "weights int8" in r.stderr
    assert_one_line_error(sample("--init_from", out_dir, "--weights", "int4"), "--weights",
                          "int8")


def test_tiny_and_infinite_temperatures(out_dir):
    """--temperature 1e-45 printed "jjjj..." (overflow): now the greedy output. inf samples
    uniformly among the top_k survivors and runs."""
    common = ("--init_from", out_dir, "--start", "a b", "--num_samples", "2",
              "--max_new_tokens", "12")
    greedy = sample(*common, "--temperature", "0")
    tiny = sample(*common, "--temperature", "1e-45")
    assert greedy.returncode == tiny.returncode == 0, tiny.stderr
    assert tiny.stdout == greedy.stdout
    hot = sample(*common, "--temperature", "inf", "--top_k", "5")
    assert hot.returncode == 0 and hot.stdout.count(SEP) == 2, hot.stderr


def test_samples_are_decoded_in_batches_and_streamed(out_dir):
    """--num_samples 100000000 grew to 22 GB and was killed without a word. Samples now go in
    bounded batches, each written as it finishes: the first ones arrive at once."""
    r = sample(f"--init_from={out_dir}", "--start", "a", "--num_samples", "5",
               "--batch_size", "2", "--max_new_tokens", "6", "--seed", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(SEP + "\n") == 5 and "3 batches of 2" in r.stderr
    again = sample(f"--init_from={out_dir}", "--start", "a", "--num_samples", "5",
                   "--batch_size", "2", "--max_new_tokens", "6", "--seed", "4")
    assert again.stdout == r.stdout
    chunks = r.stdout.split(SEP + "\n")[:5]
    assert len(set(chunks)) > 2                    # each batch draws with its own key

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    # Address space capped at 4 GiB (bash's ulimit: a preexec_fn would fork this threaded
    # process): before batching, this run would have grown past it.
    proc = subprocess.Popen(["bash", "-c", 'ulimit -v 4194304 && exec "$0" "$@"',
                             sys.executable, "sample.py", "--init_from", out_dir, "--start",
                             "a", "--num_samples", "100000000", "--max_new_tokens", "4"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        seen = 0
        deadline = time.monotonic() + 120
        while seen < 100 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line == SEP + "\n"
        assert seen == 100, proc.stderr.read() if proc.poll() is not None else "too slow"
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=60)
    assert "1562500 batches of 64" in err, err


def test_stdout_that_cannot_encode_a_sample_gets_replacement_characters(out_dir):
    """A random model emits arbitrary bytes; an ASCII-only stdout raised UnicodeEncodeError
    halfway through the samples. --eos on a vocabulary without <|endoftext|> says it is
    ignored instead of ignoring it silently."""
    r = sample("--init_from", out_dir, "--start", "a", "--max_new_tokens", "24",
               "--num_samples", "6", "--seed", "0", "--eos", "true",
               env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(SEP) == 6 and "?" in r.stdout
    assert "--eos true ignored" in r.stderr


def test_processor_stop_and_stream_flags(out_dir):
    """--stream prints what the batched path prints (the same keys, one sample at a time);
    --stop cuts each sample before its first stop; the processors' flags run; bad values are
    one-line errors."""
    common = ("--init_from", out_dir, "--start", "a b", "--num_samples", "2",
              "--max_new_tokens", "10", "--seed", "5", "--temperature", "1.5")
    plain = sample(*common, "--batch_size", "1")
    streamed = sample(*common, "--stream", "true")
    assert plain.returncode == streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == plain.stdout and "streamed" in streamed.stderr
    new = plain.stdout.split(SEP + "\n")[0][len("a b"):]
    stop = new[3:5]
    want = "a b" + new[:new.index(stop)]
    for extra in ((), ("--stream", "true")):
        r = sample(*common, "--batch_size", "1", "--stop", stop, *extra)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split(SEP + "\n")[0] == want + "\n", (extra, r.stdout, want)
    r = sample(*common, "--repetition_penalty", "1.5", "--no_repeat_ngram_size", "2",
               "--min_p", "0.05", "--eos", "true", "--min_new_tokens", "3")
    assert r.returncode == 0 and r.stdout.count(SEP) == 2, r.stderr
    assert_one_line_error(sample(*common, "--repetition_penalty", "-1"), "repetition_penalty")
    assert_one_line_error(sample(*common, "--stop", ""), "stop strings must not be empty")
    assert_one_line_error(sample(*common, "--min_new_tokens", "11"),
                          "min_new_tokens 11 exceeds max_new_tokens 10")


def test_beam_search_flags(out_dir):
    r = sample("--init_from", out_dir, "--start", "a b", "--max_new_tokens", "6",
               "--num_beams", "3", "--num_return_sequences", "2", "--length_penalty", "0.5")
    assert r.returncode == 0, r.stderr
    chunks = r.stdout.split(SEP + "\n")
    assert chunks[-1] == "" and len(chunks) == 3 and r.stderr.count("beam score") == 2
    # the library's beam search on the same checkpoint and prompt, best first
    params, cfg = gpt_jax.load_checkpoint(out_dir)
    enc = gpt_jax.get_tokenizer()
    ids = enc.encode("a b")
    want, _ = gpt_jax.beam_search(params, cfg, [ids], 6, num_beams=3, num_return_sequences=2,
                                  length_penalty=0.5)
    assert chunks[:2] == [enc.decode(ids + row) + "\n" for row in want.tolist()]
    assert_one_line_error(sample("--init_from", out_dir, "--num_beams", "2",
                                 "--num_return_sequences", "3"), "at most num_beams")
    assert_one_line_error(sample("--init_from", out_dir, "--num_beams", "2",
                                 "--length_penalty", "nan"), "length_penalty")
    assert_one_line_error(sample("--init_from", out_dir, "--length_penalty", "2"),
                          "--num_beams > 1")
    assert_one_line_error(sample("--init_from", out_dir, "--num_beams", "2", "--stop", "x"),
                          "--num_beams 2 is beam search, which takes none of --stop")


def sample_here(monkeypatch, capsys, *args):
    """sample.py's main in this process, as its entry point runs it (without the signal watch,
    which belongs to a process of its own): (exit status, stdout, stderr)."""
    import gpt_jax.cli.sample as cli
    from gpt_jax.cli.common import run
    monkeypatch.setattr(sys, "argv", ["sample.py", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        run(cli.main)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def one_line_here(monkeypatch, capsys, *args) -> str:
    code, out, err = sample_here(monkeypatch, capsys, *args)
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_settings_at_the_edges(out_dir, monkeypatch, capsys):
    """Issue 30 item 4, 31 items 2 and 4: an n-gram size past any row (a JAX TypeError), a
    stop or prompt that is not UTF-8 (argv's bytes as Python keeps them: U+DCxx; a
    UnicodeEncodeError, and a prompt silently turned into U+FFFD), a 100,000-character stop
    (18.7 GiB of tables), an absurd --batch_size."""
    base = ("--init_from", out_dir, "--start", "a b", "--max_new_tokens", "4",
            "--num_samples", "1", "--temperature", "0")
    code, want, _ = sample_here(monkeypatch, capsys, *base)
    assert code == 0
    code, out, err = sample_here(monkeypatch, capsys, *base, "--no_repeat_ngram_size",
                                 10 ** 9)
    assert (code, out) == (0, want), err
    assert one_line_here(monkeypatch, capsys, *base, "--stop", "x\udcff") == (
        "error: argument --stop: not UTF-8 text (byte 0xff at character 1): pass UTF-8 text "
        "(see python sample.py --help)")
    assert "argument --start: not UTF-8 text (byte 0xfe at character 0)" in one_line_here(
        monkeypatch, capsys, *base[:2], "--start", "\udcfe")
    import gpt_jax.generation.memory as memory
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 4 << 30)
    line = one_line_here(monkeypatch, capsys, *base, "--stop", "a" * 100_000)
    assert line.startswith("error: the stop string 'aaaaaaaaaaaaaaaaaaaa'... (100,000 bytes) "
                           "needs at least ") and "use stop strings of at most " in line
    line = one_line_here(monkeypatch, capsys, *base[:-4], "--num_samples", 10 ** 9,
                         "--batch_size", 10 ** 9)
    fit = memory.max_batch(gpt_jax.load_checkpoint(out_dir)[1], gpt_jax.generation.bucket_length(2, 32), 4)
    assert line == (f"error: --batch_size 1000000000 is more than fits in memory: at most "
                    f"{fit} samples of this prompt and --max_new_tokens fit at once here: "
                    f"pass --batch_size {fit} or less")


def test_beam_search_refuses_the_sampling_flags(out_dir, monkeypatch, capsys):
    """--num_beams 2 with --temperature / --top_k (which the library refuses) or --num_samples
    (it printed one beam) ran without a word; too many beams for memory spoke of prompts."""
    base = ("--init_from", out_dir, "--max_new_tokens", "4", "--num_beams", "2")
    for flags in (("--temperature", "0.5"), ("--top_k", "5"), ("--num_samples", "5"),
                  ("--top_p", "0.9", "--seed", "3")):
        line = one_line_here(monkeypatch, capsys, *base, *flags)
        assert line.startswith("error: --num_beams 2 is beam search: it does not sample"), line
        assert f"leave out {', '.join(f for f in flags if f.startswith('--'))} (or use " \
               f"--num_beams 1)" in line
    import gpt_jax.generation.memory as memory
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 1 << 30)
    line = one_line_here(monkeypatch, capsys, *base[:-1], 10 ** 8)
    assert line.startswith("error: --num_beams 100000000 is more beams than fit in memory for 1 "
                           "prompt") and "prompts" not in line
    assert line.endswith(" or fewer") and "pass --num_beams " in line


def test_step_on_a_hugging_face_directory_says_what_step_is_for(out_dir, tmp_path,
                                                                monkeypatch, capsys):
    """It said the directory "holds no checkpoints/": --step picks a train.py checkpoint, and
    a Hugging Face directory loads without it."""
    params, cfg = gpt_jax.load_checkpoint(out_dir)
    hf = str(tmp_path / "hf")
    gpt_jax.to_hf(params, cfg, hf)
    assert one_line_here(monkeypatch, capsys, "--init_from", hf, "--step", "3") == (
        f"error: --step 3 applies to a train.py out_dir (it picks one of its checkpoints), and "
        f"{hf} is a Hugging Face directory, which loads without it: drop --step 3")


def shell_sample(out_dir, redirect, *args):
    """sample.py run by bash with a redirection of its stdout (a closed stdout, /dev/full, a
    pipe into head): (exit status of sample.py, its stderr)."""
    cmd = " ".join([sys.executable, "sample.py", "--init_from", out_dir, *args])
    script = f"{cmd} {redirect} 2>{out_dir}/err.txt; echo ${{PIPESTATUS[0]}}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    with open(f"{out_dir}/err.txt") as f:
        return int(r.stdout.strip().splitlines()[-1]), f.read()


@pytest.mark.parametrize("stream", ["false", "true"])
def test_output_streams_that_fail(out_dir, stream):
    """stdout closed, full (/dev/full) or a reader that leaves (head -c 100): one line, or a
    quiet end, never a traceback (issue 30 item 5)."""
    args = ("--num_samples", "3", "--max_new_tokens", "20", "--stream", stream)
    code, err = shell_sample(out_dir, ">&-", *args)
    assert code == 1 and err.strip().splitlines() == [
        "error: stdout is closed, and sample.py writes the samples there: redirect it to a "
        "file or a pipe"], err
    code, err = shell_sample(out_dir, "> /dev/full", *args)
    assert code == 1 and "Traceback" not in err and "Exception ignored" not in err, err
    assert err.strip().splitlines()[-1] == (
        "error: could not write the samples to stdout (No space left on device): redirect it "
        "to a file on a disk with room, or to a pipe"), err
    code, err = shell_sample(out_dir, "| head -c 100 > /dev/null",
                             "--num_samples", "200", "--max_new_tokens", "20", "--stream", stream)
    assert code in (0, 141) and "Traceback" not in err and "Exception ignored" not in err, err


def test_ctrl_c_mid_decode_ends_at_once(out_dir):
    """SIGINT once the decode is under way (its compile or its loop, where Python's own
    handler would wait): exit 130 within about a second, the last line says so (issue 30
    item 8)."""
    from signals import Watched
    with Watched("sample.py", "--init_from", out_dir, "--num_beams", "16", "--max_new_tokens",
                 "24", "--num_return_sequences", "16") as w:
        w.wait_for(lambda w: b"[sample] model" in w.err)   # the config line: checks are done
        time.sleep(0.3)
        took = w.stop(timeout=30)
    assert w.proc.returncode == 130 and took < 5, (w.proc.returncode, took, w.err.decode())
    assert w.lines()[-1] == "sample.py stopped by SIGINT", w.err.decode()
