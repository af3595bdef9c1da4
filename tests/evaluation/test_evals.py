"""The lm-eval model "gpt_jax" (gpt_jax/evaluation/harness.py) against lm-eval's own Hugging Face backend,
request by request, on one random GPT-2 saved by transformers: loglikelihood, multiple choice,
loglikelihood_rolling and generate_until, through local YAML tasks over small jsonl files (no
network). Needs the eval extra (pip install .[test,eval]); CI installs it."""
import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

lm_eval = pytest.importorskip("lm_eval", reason="needs lm-eval (pip install .[eval])")
pytest.importorskip("accelerate", reason="lm-eval's hf backend needs accelerate (.[eval])")
torch = pytest.importorskip("torch", reason="needs torch (pip install .[test])")
transformers = pytest.importorskip("transformers", reason="needs transformers (.[test])")

from gpt_jax.errors import UserError
from gpt_jax.model.tokenizer import bpe_files

BLOCK = 48
WORDS = ("the cat sat on a mat while dogs ran far away into deep green woods and never came "
         "back home again").split()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A GPT-2 with every tensor random (N(0, 0.1), LayerNorm scales 1 + N(0, 0.1)) and GPT-2's
    tokenizer, saved by transformers. transformers 5 builds an empty GPT-2 tokenizer from
    vocab/merges files, so the tokenizer is the tokenizers library's byte-level BPE over the
    same local files, wrapped."""
    from tokenizers import ByteLevelBPETokenizer
    d = str(tmp_path_factory.mktemp("hf_gpt2"))
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=BLOCK,
                                     vocab_size=50257, bos_token_id=50256, eos_token_id=50256)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = 0.1 * torch.randn_like(p)
            p.copy_(1.0 + noise if ".ln_" in name and name.endswith(".weight") else noise)
    model.save_pretrained(d)
    vocab_bpe, encoder_json = bpe_files()
    eot = "<|endoftext|>"
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=ByteLevelBPETokenizer(encoder_json, vocab_bpe),
        bos_token=eot, eos_token=eot, unk_token=eot)
    tokenizer.save_pretrained(d)
    return d


def yaml_task(name, data, output_type, body):
    return (f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {data}\noutput_type: {output_type}\ntest_split: test\n{body}")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    rng = np.random.default_rng(0)
    sentence = lambda n: " ".join(rng.choice(WORDS, n))

    def jsonl(name, rows):
        (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return d / name

    # Contexts of 2..60 words: some longer than the block (cut from the left).
    ll = jsonl("ll.jsonl", [{"text": sentence(n)} for n in (2, 9, 25, 60)])
    mc = jsonl("mc.jsonl", [{"ctx": sentence(n), "choices": [sentence(k) for k in (1, 3, 6)],
                             "label": 1} for n in (0, 4, 12)])
    # Texts of 3..150 tokens: one to four rolling windows.
    roll = jsonl("roll.jsonl", [{"text": sentence(n)} for n in (3, 40, 100, 150)])
    gen = jsonl("gen.jsonl", [{"text": sentence(n)} for n in (1, 5, 20, 45)])
    (d / "t_ll.yaml").write_text(yaml_task("t_ll", ll, "loglikelihood", (
        "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
        "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n"
        "    higher_is_better: false\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\n")))
    # An empty context for the first row: lm-eval conditions on the prefix token.
    (d / "t_mc.yaml").write_text(yaml_task("t_mc", mc, "multiple_choice", (
        "doc_to_text: \"{{ctx}}\"\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "target_delimiter: \" \"\nmetric_list:\n  - metric: acc\n")))
    (d / "t_roll.yaml").write_text(yaml_task("t_roll", roll, "loglikelihood_rolling", (
        "doc_to_text: \"\"\ndoc_to_target: \"{{text}}\"\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")))
    # "e" is a frequent stop string in random text, so `until` gets exercised; 7 tokens make
    # the longest context (45 words) lose its start to block_size - max_gen_toks.
    (d / "t_gen.yaml").write_text(yaml_task("t_gen", gen, "generate_until", (
        "doc_to_text: \"{{text}}\"\ndoc_to_target: \"{{text}}\"\n"
        "generation_kwargs:\n  until: [\"e\", \"\\n\"]\n  max_gen_toks: 7\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")))
    return str(d)


@pytest.fixture(scope="module")
def task_manager():
    """lm-eval's TaskManager over the local tasks only (scanning its 14,000 built-in ones takes
    tens of seconds)."""
    from lm_eval.tasks import TaskManager
    return functools.partial(TaskManager, include_defaults=False)


@pytest.fixture(scope="module")
def models(hf_dir):
    import gpt_jax.evals
    from lm_eval.api.registry import get_model
    ours = get_model("gpt_jax")(init_from=hf_dir, batch_size="auto", device="cpu")
    theirs = get_model("hf")(pretrained=hf_dir, batch_size=4, device="cpu")
    assert isinstance(ours, gpt_jax.evaluation.harness.GptJaxLM)
    return ours, theirs


def instances(task_manager, task_dir, name):
    task = task_manager(include_path=task_dir).load([name])["tasks"][name]
    task.build_all_requests(limit=None, rank=0, world_size=1)
    return task.instances


@pytest.mark.parametrize("name", ["t_ll", "t_mc", "t_roll", "t_gen"])
def test_same_answers_as_the_hf_backend(models, task_manager, task_dir, name):
    ours, theirs = models
    reqs = instances(task_manager, task_dir, name)
    kind = reqs[0].request_type
    a, b = getattr(ours, kind)(reqs), getattr(theirs, kind)(reqs)
    assert len(a) == len(b) == len(reqs)
    for x, y in zip(a, b):
        if kind == "generate_until":
            assert x == y
        elif kind == "loglikelihood":
            assert abs(x[0] - y[0]) <= 1e-4 * (1 + abs(y[0])) and x[1] == y[1], (x, y)
        else:
            assert abs(x - y) <= 1e-4 * (1 + abs(y)), (x, y)
    if kind == "generate_until":   # the data exercises the stop strings and the full length
        assert any(len(ours.tok_encode(x)) < 7 for x in a)


def test_generate_until_samples_when_the_task_samples(models, task_manager, task_dir):
    ours, _ = models
    reqs = instances(task_manager, task_dir, "t_gen")
    for r in reqs:
        r.arguments = (r.arguments[0], {"until": ["\n"], "max_gen_toks": 5, "do_sample": True,
                                        "temperature": 1.0, "top_k": 50})
    first, second = ours.generate_until(reqs), ours.generate_until(reqs)
    assert first != second        # fresh keys each call: samples, not the greedy answer


def test_simple_evaluate_through_eval_py(hf_dir, task_manager, task_dir, models, tmp_path,
                                         monkeypatch, capsys):
    """eval.py --harness runs lm_eval.simple_evaluate with the registered "gpt_jax" model."""
    import lm_eval.tasks
    import gpt_jax.cli.eval as cli
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", task_manager)
    out = tmp_path / "harness.json"
    cli.main(["--harness", "t_ll", "--init_from", hf_dir, "--include_path", task_dir,
              "--limit", "3", "--json", str(out)])
    assert "t_ll" in capsys.readouterr().out
    got = json.loads(out.read_text())["results"]["t_ll"]
    # The metrics of the hf backend's own answers for the same 3 documents.
    ll = models[1].loglikelihood(instances(task_manager, task_dir, "t_ll")[:3])
    assert got["perplexity,none"] == pytest.approx(np.exp(-np.mean([x for x, _ in ll])), rel=1e-4)
    assert got["acc,none"] == pytest.approx(np.mean([g for _, g in ll]))
    with pytest.raises(UserError, match="unknown lm-eval task"):
        cli.main(["--harness", "t_ll,nope", "--init_from", hf_dir, "--include_path", task_dir])


def test_model_args_errors(hf_dir):
    from gpt_jax.evaluation.harness import GptJaxLM
    with pytest.raises(UserError, match="needs model_args init_from"):
        GptJaxLM()
    with pytest.raises(UserError, match="batch_size must be a positive integer or 'auto'"):
        GptJaxLM(init_from=hf_dir, batch_size="many")
    # each was a raw ValueError / TypeError, silently rounded, or a later error about
    # max_new_tokens: now one line at construction, before the model loads
    for args, fragment in (({"seed": "abc"}, "seed must be an integer in [0, 2**32), got 'abc'"),
                           ({"batch_size": 2.5}, "batch_size must be a positive integer or "
                                                 "'auto', got 2.5"),
                           ({"max_batch_size": "2.5"}, "max_batch_size must be a positive"),
                           ({"max_gen_toks": 0}, "max_gen_toks must be a positive integer, "
                                                 "got 0"),
                           ({"dtype": "float64"}, "dtype must be one of"),
                           ({"temprature": 0.5}, "has no argument(s) temprature; its "
                                                 "model_args are init_from")):
        with pytest.raises(UserError, match=re.escape(fragment)) as e:
            GptJaxLM(init_from=os.path.join(hf_dir, "missing"), **args)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="has no argument"):     # as lm-eval builds it
        GptJaxLM.create_from_arg_string(f"init_from={hf_dir},foo=1", {"batch_size": 4})
    lm = GptJaxLM.create_from_arg_string(f"init_from={hf_dir},seed=7,max_gen_toks=8.0",
                                         {"batch_size": "3", "max_batch_size": 2})
    assert (lm.batch_size, lm.max_gen_toks) == (2, 8)


def test_importing_gpt_jax_evals_keeps_lm_evals_own_models():
    """lm-eval 0.4.13 loads its own models only while its registry is empty; in a fresh
    process, registering "gpt_jax" must leave "hf" loadable."""
    code = ("import gpt_jax.evals\n"
            "from lm_eval.api.registry import get_model\n"
            "print(get_model('gpt_jax').__name__, get_model('hf').__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["GptJaxLM", "HFLM"]
    # and `import gpt_jax` alone does not import lm-eval
    r = subprocess.run([sys.executable, "-c", "import sys, gpt_jax; print('lm_eval' in sys.modules)"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT})
    assert r.stdout.strip() == "False", r.stderr


def test_a_hub_task_without_the_network_is_one_line(hf_dir, tmp_path, monkeypatch):
    """eval.py --harness lambada_openai offline ended in a ConnectionError traceback (eval.py
    --task said it in one line): now one UserError line that says where the datasets go."""
    import datasets
    import huggingface_hub.constants
    import lm_eval.tasks
    import gpt_jax.evaluation.harness as evals
    (tmp_path / "t_hub.yaml").write_text(
        "task: t_hub\ndataset_path: EleutherAI/lambada_openai\ndataset_name: default\n"
        "output_type: loglikelihood\ntest_split: test\ndoc_to_text: \"{{text}}\"\n"
        "doc_to_target: \" x\"\nmetric_list:\n  - metric: perplexity\n")
    # Offline as CI runs (HF_HUB_OFFLINE=1): no request leaves this process.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(
        lm_eval.tasks.TaskManager, include_defaults=False))   # (skips the built-in scan)
    with pytest.raises(UserError, match="lm-eval task.s. t_hub need their datasets from the "
                                        "Hugging Face Hub, which cannot be reached") as e:
        evals.run_harness(hf_dir, ["t_hub"], include_path=str(tmp_path), limit=1)
    assert "\n" not in str(e.value) and str(datasets.config.HF_DATASETS_CACHE) in str(e.value)


def test_a_step_on_a_hugging_face_directory_names_the_callers_argument(hf_dir):
    """The lm-eval model given step=10 on a Hugging Face directory was told to "drop --step"
    (its argument is step=); eval.py --harness --step 10 is told about --step."""
    from gpt_jax.evaluation.harness import GptJaxLM, run_harness
    with pytest.raises(UserError) as e:
        GptJaxLM(init_from=hf_dir, step=10)
    assert str(e.value) == (f"step=10 applies to a train.py out_dir (it picks one of its "
                            f"checkpoints), and {hf_dir} is a Hugging Face directory, which "
                            f"loads without it: drop step=10")
    with pytest.raises(UserError, match=r"^--step 10 applies to a train.py out_dir .* drop "
                                        r"--step 10$"):
        run_harness(hf_dir, ["t_ll"], step=10)
