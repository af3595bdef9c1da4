"""train.py's flags that were dropped or misread without a word (issue 31): a config file's
value is checked even where a flag overrides it; flags that do nothing in the run as resolved
warn once; a negative --profile_steps window says what the flag takes. In process through
cli/train.py's main and cli.common.run, as `python train.py` runs it."""
import json

import pytest

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
        "--batch_size", "4", "--eval_iters", "1", "--warmup_iters", "2", "--lr_decay_iters",
        "100", "--log_interval", "1"]


def run_main(capsys, *argv):
    """train.py's main in process, through cli.run: (exit code, stdout, stderr)."""
    import gpt_jax.cli.train as train_cli
    from gpt_jax.cli.common import run
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: train_cli.main([str(a) for a in argv]))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def one_line_error(code, err, *parts):
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    for p in parts:
        assert p in err, err


def warnings(err):
    return [line for line in err.splitlines() if line.startswith("warning: ")]


@pytest.mark.parametrize("content, flags, words", [
    ({"n_layer": "two"}, ["--n_layer", "2"], "n_layer must be a positive integer, got 'two'"),
    ({"batch_size": 0}, ["--batch_size", "4"], "batch_size must be a positive integer, got 0"),
    ({"learning_rate": "fast"}, ["--learning_rate", "1e-3"],
     "learning_rate must be a finite non-negative number, got 'fast'"),
    ({"lr_schedule": "cosin"}, ["--lr_schedule", "wsd"], "lr_schedule must be one of"),
    ({"remat": "yes"}, ["--remat", "false"], "remat must be true or false, got 'yes'"),
    ({"dtype": "float16"}, ["--dtype", "float32"], "dtype must be float32 or bfloat16"),
    ({"profile_steps": "-1:3"}, ["--profile_steps", "1:2"],
     "profile_steps -1:3: the window must be non-negative")])
def test_a_config_file_value_is_checked_even_when_a_flag_overrides_it(tmp_path, capsys,
                                                                     content, flags, words):
    """The file alone was refused; with the flag that overrides the bad key it trained."""
    f = tmp_path / "c.json"
    f.write_text(json.dumps(content))
    code, _, err = run_main(capsys, "--config", f, *flags, "--out_dir", tmp_path / "o")
    one_line_error(code, err, f"config file {f}: {words}")
    assert not (tmp_path / "o").exists()


def test_config_file_keys_that_fit_only_with_the_flags_are_still_accepted(tmp_path):
    """Keys are checked one by one: a file whose learning_rate is below the default min_lr is
    fine when --min_lr lowers it (the run as resolved is what must fit together)."""
    import gpt_jax.cli.train as train_cli
    from gpt_jax.train.config import resolve_config
    f = tmp_path / "c.toml"
    f.write_text('learning_rate = 1e-4\nwarmup_iters = 900\nn_head = 3\n')
    config, flags, _ = train_cli.parse_args(["--config", str(f), "--min_lr", "1e-5",
                                             "--lr_decay_iters", "2000", "--n_embd", "96"])
    tc = resolve_config(config, flags)
    assert (tc.learning_rate, tc.min_lr, tc.warmup_iters, tc.model.n_head) == \
        (1e-4, 1e-5, 900, 3)


def test_a_negative_profile_window_says_what_the_flag_takes(tmp_path, capsys):
    """argparse read -1:3 as an option ("expected one argument")."""
    for argv in (["--profile_steps", "-1:3"], ["--profile_steps=-1:3"]):
        code, _, err = run_main(capsys, *argv, "--out_dir", tmp_path / "o")
        one_line_error(code, err, "profile_steps -1:3: the window must be non-negative",
                       "0 <= START < END")
    assert not (tmp_path / "o").exists()


def test_flags_that_do_nothing_warn_once(builtin_data, tmp_path, capsys):
    """--skip_warmup with the spike guard off and --decay_frac with a schedule other than
    wsd (a fresh run); --profile_steps whose window ended before the step a run resumes at
    (it traces nothing); --log_to with --eval_only (nothing is logged). Each is one warning
    line, and the run goes on; the same flags where they act give none."""
    out = tmp_path / "o"
    code, stdout, err = run_main(capsys, *TINY, "--max_iters", "2", "--eval_interval", "2",
                                 "--skip_warmup", "10", "--decay_frac", "0.3", "--out_dir", out)
    assert code == 0 and "done: step 2" in stdout, err
    assert warnings(err) == [
        "warning: --skip_warmup 10 does nothing while the spike guard is off: pass "
        "--skip_loss_z or --skip_grad_z (e.g. 5) to turn it on",
        "warning: --decay_frac 0.3 does nothing with --lr_schedule cosine: it sets wsd's "
        "decay (pass --lr_schedule wsd)"], err

    code, stdout, err = run_main(capsys, *TINY, "--init_from", "resume", "--max_iters", "3",
                                 "--profile_steps", "0:2", "--skip_loss_z", "4",
                                 "--skip_warmup", "10", "--lr_schedule", "wsd",
                                 "--decay_frac", "0.5", "--out_dir", out)
    assert code == 0 and "done: step 3" in stdout, err
    assert warnings(err) == [
        "warning: --profile_steps 0:2 traces nothing: this run resumes at step 2, after the "
        "window (pass a window from step 2 on)"], err
    assert not (out / "profile").exists()

    rows = (out / "metrics.jsonl").read_text()
    code, stdout, err = run_main(capsys, *TINY, "--init_from", "resume", "--eval_only", "true",
                                 "--log_to", "tensorboard", "--out_dir", out)
    assert code == 0 and "eval: train loss" in stdout, err
    assert warnings(err) == [
        "warning: --log_to tensorboard does nothing with --eval_only, which writes no "
        "metrics: the losses are printed only"], err
    assert not (out / "tensorboard").exists() and (out / "metrics.jsonl").read_text() == rows
