"""Hugging Face GPT-2 import/export: parity with transformers.GPT2LMHeadModel.

There are no hub weights offline, so the tests build their own reference checkpoints with
transformers and randomise EVERY tensor first: a fresh GPT-2 has zero biases and unit LayerNorms,
under which a swapped ln_1/ln_2 or a dropped bias would still pass.
"""
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # no network here: never try the hub for real

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="HF parity tests need torch (pip install .[test])")
transformers = pytest.importorskip("transformers",
                                   reason="HF parity tests need transformers (pip install .[test])")
import jax
import jax.numpy as jnp
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from conftest import ROOT
import gpt_jax.cli.hf as hf_cli
import gpt_jax
import gpt_jax.checkpoint.hf as hf
import gpt_jax.checkpoint.hf_files as hf_files
from gpt_jax.errors import CheckpointError, ConfigError, UserError

FP32_TOL = 1e-4    # max |Δlogits| <= FP32_TOL * max(1, max |logits|)
# bfloat16 compute (float32 params, LayerNorm statistics and softmax) vs HF float32: an 8-bit
# mantissa through every matmul. With these N(0, 0.1) random weights we observe ~1.3% (small)
# and ~4% (GPT-2 widths) of max |logits|; float32 is what proves the mapping, this bounds drift.
BF16_TOL = 1e-1
MEASURED = {}      # observed max differences, printed at the end (run with -s to see them)

SMALL = dict(n_layer=3, n_head=4, n_embd=64, vocab_size=500, n_positions=64)
WIDE = dict(n_layer=2, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)  # GPT-2 small widths


def make_hf_model(seed, **kw):
    """A GPT2LMHeadModel with every tensor random: weights and biases ~ N(0, 0.1), LayerNorm
    weights 1 + N(0, 0.1)."""
    torch.manual_seed(seed)
    eos = min(kw["vocab_size"], 50257) - 1
    config = transformers.GPT2Config(bos_token_id=eos, eos_token_id=eos, **kw)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():   # the tied lm_head is wte: listed once
            noise = 0.1 * torch.randn_like(p)
            p.copy_(1.0 + noise if ".ln_" in name and name.endswith(".weight") else noise)
    return model


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def our_logits(params, cfg, tokens):
    return np.asarray(gpt_jax.GPT(cfg).apply({"params": params}, jnp.asarray(tokens, jnp.int32)))


def max_diff(ours, ref):
    """(max |Δ|, the tolerance scale max(1, max |ref|))."""
    return float(np.max(np.abs(ours - ref))), max(1.0, float(np.max(np.abs(ref))))


def assert_close(ours, ref, tol, label):
    diff, scale = max_diff(ours, ref)
    MEASURED[label] = (diff, scale)
    print(f"\n{label}: max|Δlogits| = {diff:.3g} (max|logits| {scale:.3g}, "
          f"relative {diff / scale:.3g}, tolerance {tol:g})")
    assert diff <= tol * scale, f"{label}: max|Δ| {diff} > {tol} * {scale}"


def random_tokens(vocab, shape, seed=0):
    return np.random.default_rng(seed).integers(0, min(vocab, 50257), shape, dtype=np.int32)


def assert_trees_equal(a, b):
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), k


# -- fixtures: reference checkpoints -------------------------------------------------------
def saved_reference(tmp_path_factory, name, seed, arch):
    """(randomised transformers model, the directory it was saved to)."""
    model = make_hf_model(seed, **arch)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return model, str(path)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return saved_reference(tmp_path_factory, "small", 0, SMALL)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return saved_reference(tmp_path_factory, "wide", 1, WIDE)


def hub_layout(model, path):
    """The original hub "gpt2" layout: no `transformer.` prefix, no lm_head.weight, the causal
    mask buffers h.N.attn.bias (1, 1, P, P) and h.N.attn.masked_bias (a scalar) present."""
    cfg = model.config
    tensors = {k.removeprefix("transformer."): v.detach().numpy().copy()
               for k, v in model.state_dict().items() if k != "lm_head.weight"}
    P = cfg.n_positions
    for i in range(cfg.n_layer):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((P, P), np.float32))[None, None]
        tensors[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config = dict(activation_function="gelu_new", architectures=["GPT2LMHeadModel"],
                  attn_pdrop=0.1, bos_token_id=cfg.bos_token_id, embd_pdrop=0.1,
                  eos_token_id=cfg.eos_token_id, initializer_range=0.02,
                  layer_norm_epsilon=1e-05, model_type="gpt2", n_ctx=P, n_embd=cfg.n_embd,
                  n_head=cfg.n_head, n_layer=cfg.n_layer, n_positions=P, resid_pdrop=0.1,
                  summary_activation=None, summary_first_dropout=0.1,
                  summary_proj_to_labels=True, summary_type="cls_index", summary_use_proj=True,
                  task_specific_params={"text-generation": {"do_sample": True, "max_length": 50}},
                  vocab_size=cfg.vocab_size)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    return str(path)


# -- import parity ---------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["small", "wide"])
def test_from_hf_logits_match_transformers(which, request):
    model, path = request.getfixturevalue(which)
    params, cfg = gpt_jax.from_hf(path)
    c = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.block_size) == (
        c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.n_positions)
    tokens = random_tokens(cfg.vocab_size, (2, 48), seed=1)
    ref = hf_logits(model, tokens)
    assert_close(our_logits(params, cfg, tokens), ref, FP32_TOL, f"{which} float32")

    # bfloat16 compute (params stay float32) against HF float32: a looser, stated tolerance.
    params16, cfg16 = gpt_jax.from_hf(path, dtype="bfloat16")
    assert cfg16.dtype == "bfloat16" and cfg16.param_dtype == "float32"
    assert_close(our_logits(params16, cfg16, tokens), ref, BF16_TOL, f"{which} bfloat16")


def test_hub_layout_without_prefix_with_buffers(small, tmp_path):
    model, _ = small
    path = hub_layout(model, tmp_path / "hub")
    names = load_file(os.path.join(path, "model.safetensors")).keys()
    assert "h.0.attn.bias" in names and "wte.weight" in names
    params, cfg = gpt_jax.from_hf(path)
    tokens = random_tokens(cfg.vocab_size, (2, 32), seed=2)
    assert_close(our_logits(params, cfg, tokens), hf_logits(model, tokens), FP32_TOL,
                 "hub layout float32")


def test_pytorch_model_bin(small, tmp_path):
    model, path = small
    shutil.copy(os.path.join(path, "config.json"), tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")   # includes tied lm_head
    params, cfg = gpt_jax.from_hf(str(tmp_path))
    ref, _ = gpt_jax.from_hf(path)
    assert_trees_equal(params, ref)


# -- export ----------------------------------------------------------------------------------
def load_with_transformers(path):
    model, info = transformers.GPT2LMHeadModel.from_pretrained(path, output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), f"{key}: {info[key]}"
    return model.eval()


def test_to_hf_roundtrip(small, tmp_path):
    _, path = small
    params, cfg = gpt_jax.from_hf(path)
    out = str(tmp_path / "export")
    gpt_jax.to_hf(params, cfg, out)
    tokens = random_tokens(cfg.vocab_size, (2, 40), seed=3)
    assert_close(our_logits(params, cfg, tokens), hf_logits(load_with_transformers(out), tokens),
                 FP32_TOL, "export float32")
    params2, cfg2 = gpt_jax.from_hf(out)
    assert cfg2 == cfg
    assert_trees_equal(params2, params)            # bit-identical


def randomised_params(cfg, seed):
    """gpt_jax params with every leaf random (GPT-2 init has zero biases and unit norms)."""
    params = gpt_jax.init_params(cfg, jax.random.key(seed))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def test_to_hf_drops_padded_vocab(tmp_path):
    cfg = gpt_jax.GPTConfig(vocab_size=50304, n_layer=2, n_head=2, n_embd=32, block_size=32)
    params = randomised_params(cfg, 0)
    out = str(tmp_path / "padded")
    gpt_jax.to_hf(params, cfg, out)
    assert load_file(os.path.join(out, "model.safetensors"))["transformer.wte.weight"].shape == (
        50257, 32)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["vocab_size"] == 50257
    tokens = random_tokens(50257, (2, 24), seed=4)
    ours = our_logits(params, cfg, tokens)
    assert_close(ours[..., :50257], hf_logits(load_with_transformers(out), tokens), FP32_TOL,
                 "padded export float32")
    params2, cfg2 = gpt_jax.from_hf(out)
    assert cfg2.vocab_size == 50257
    np.testing.assert_array_equal(params2["wte"]["embedding"], params["wte"]["embedding"][:50257])


def test_to_transformers_in_memory_peer():
    cfg = gpt_jax.GPTConfig(vocab_size=300, n_layer=2, n_head=2, n_embd=32, block_size=32)
    params = randomised_params(cfg, 3)
    model = hf.to_transformers(params, cfg)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied
    tokens = random_tokens(300, (2, 24), seed=5)
    assert_close(our_logits(params, cfg, tokens), hf_logits(model, tokens), FP32_TOL,
                 "to_transformers float32")


def test_to_hf_refuses_bias_free(tmp_path):
    cfg = gpt_jax.GPTConfig(vocab_size=100, n_layer=1, n_head=2, n_embd=16, block_size=16,
                            bias=False)
    with pytest.raises(ConfigError, match="bias"):
        gpt_jax.to_hf(gpt_jax.init_params(cfg, jax.random.key(0)), cfg, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_export_cli(tmp_path, capsys):
    cfg = gpt_jax.GPTConfig(vocab_size=300, n_layer=2, n_head=2, n_embd=32, block_size=32)
    params = randomised_params(cfg, 3)
    gpt_jax.save_checkpoint(str(tmp_path / "out"), 7, params, cfg)
    assert hf_cli.main(["export", str(tmp_path / "out"), str(tmp_path / "hf")]) == 0
    params2, cfg2 = gpt_jax.from_hf(str(tmp_path / "hf"))
    assert cfg2 == cfg
    assert_trees_equal(params2, params)
    load_with_transformers(str(tmp_path / "hf"))

    from gpt_jax.cli.common import run
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: hf_cli.main(["export", str(tmp_path / "nothing"), str(tmp_path / "hf2")]))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err


def export_error(capsys, *argv):
    from gpt_jax.cli.common import run
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(lambda: hf_cli.main([str(a) for a in argv]))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_export_refuses_to_overwrite_and_respects_the_umask(tmp_path, capsys):
    cfg = gpt_jax.GPTConfig(vocab_size=300, n_layer=1, n_head=2, n_embd=32, block_size=32)
    out, dst = str(tmp_path / "out"), tmp_path / "hf"
    gpt_jax.save_checkpoint(out, 1, randomised_params(cfg, 1), cfg)
    gpt_jax.save_checkpoint(out, 2, randomised_params(cfg, 2), cfg)
    dst.mkdir()
    (dst / "README.md").write_text("mine")
    old = os.umask(0o022)
    try:
        assert "is not empty" in export_error(capsys, "export", out, dst)
        assert sorted(os.listdir(dst)) == ["README.md"]
        assert hf_cli.main(["export", out, str(dst), "--step", "1", "--overwrite"]) == 0
        assert sorted(os.listdir(dst)) == ["README.md", "config.json", "model.safetensors"]
        for name in ("config.json", "model.safetensors"):
            assert os.stat(dst / name).st_mode & 0o777 == 0o644, name
        assert_trees_equal(gpt_jax.from_hf(str(dst))[0], randomised_params(cfg, 1))
        # a file where the directory should be, a directory under a file: one line each
        (tmp_path / "file").write_text("x")
        assert "is a file" in export_error(capsys, "export", out, tmp_path / "file")
        assert "not a writable directory" in export_error(capsys, "export", out,
                                                          tmp_path / "file" / "hf")
        with pytest.raises(UserError, match="is not empty"):
            gpt_jax.to_hf(randomised_params(cfg, 1), cfg, str(dst))
    finally:
        os.umask(old)


@pytest.mark.parametrize("argv, words", [
    (["export"], "the following arguments are required: out_dir, hf_dir"),
    (["export", "a", "b", "--step", "x"], "argument --step: invalid int value"),
    (["import", "a"], "invalid choice: 'import'"),
    ([], "the following arguments are required: command")])
def test_hf_cli_bad_flags_are_one_line(capsys, argv, words):
    assert words in export_error(capsys, *argv)


def test_hf_cli_bad_flags_exit_1_as_a_subprocess():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "gpt_jax.hf", "export"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: "), r.stderr
    assert r.stderr.count("\n") == 1 and "usage:" not in r.stderr


# -- greedy decoding -------------------------------------------------------------------------
def greedy(params, cfg, prompt, max_new_tokens):
    """Full-recompute argmax decode: one fixed-shape buffer, so one compile. The model is
    causal, so the junk past position t never reaches the logits at t - 1."""
    B, T0 = prompt.shape
    buf = jnp.zeros((B, T0 + max_new_tokens), jnp.int32).at[:, :T0].set(prompt)

    @jax.jit
    def step(params, buf, t):  # params as an argument: closed-over arrays become constants
        logits = gpt_jax.GPT(cfg).apply({"params": params}, buf)
        nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t - 1, 1, keepdims=False), -1)
        return jax.lax.dynamic_update_index_in_dim(buf, nxt.astype(jnp.int32), t, 1)

    for t in range(T0, T0 + max_new_tokens):
        buf = step(params, buf, t)
    return np.asarray(buf[:, T0:])


def assert_same_until_eos(ours, ref, eos, label):
    for row, (a, b) in enumerate(zip(ours, ref)):
        n = len(b) if eos not in b else list(b).index(eos) + 1
        assert n > 0 and list(a[:n]) == list(b[:n]), f"{label}, row {row}: {a[:n]} vs {b[:n]}"


@pytest.mark.parametrize("which", ["small", "wide"])
def test_greedy_matches_transformers_generate(which, request):
    model, path = request.getfixturevalue(which)
    params, cfg = gpt_jax.from_hf(path)
    prompt = random_tokens(cfg.vocab_size, (2, 8), seed=5)
    eos = model.config.eos_token_id
    with torch.no_grad():
        out = model.generate(torch.tensor(prompt, dtype=torch.long),
                             attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                             do_sample=False, max_new_tokens=32, pad_token_id=eos)
    ref = out[:, prompt.shape[1]:].numpy()
    ours = greedy(params, cfg, jnp.asarray(prompt), 32)
    assert_same_until_eos(ours, ref, eos, "full-recompute greedy")

    # ...and the KV-cache decoder (temperature 0 is greedy).
    new = gpt_jax.generate(params, cfg, prompt, 32, jax.random.key(0), temperature=0.0)
    assert_same_until_eos(np.asarray(new), ref, eos, "gpt_jax.generate greedy")


# -- errors users can cause ------------------------------------------------------------------
def rewrite(src, dst, *, drop=(), change=None, config=None):
    """A copy of the HF dir at src with tensors dropped/replaced and config.json keys changed."""
    os.makedirs(dst, exist_ok=True)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    for k in drop:
        del tensors[k]
    tensors.update(change or {})
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump({**cfg, **(config or {})}, f)
    return str(dst)


def one_line_error(exc_type, source, *words):
    with pytest.raises(exc_type) as e:
        gpt_jax.from_hf(source)
    msg = str(e.value)
    assert isinstance(e.value, UserError) and "\n" not in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in: {msg}"
    return msg


def test_missing_tensor(small, tmp_path):
    bad = rewrite(small[1], tmp_path, drop=["transformer.h.1.mlp.c_fc.bias"])
    one_line_error(CheckpointError, bad, "missing", "h.1.mlp.c_fc.bias")


def test_wrong_shape(small, tmp_path):
    bad = rewrite(small[1], tmp_path, change={"transformer.ln_f.bias": np.zeros(63, np.float32)})
    one_line_error(CheckpointError, bad, "ln_f.bias", "(63,)", "(64,)")


def test_extra_tensor(small, tmp_path):
    bad = rewrite(small[1], tmp_path,
                  change={"transformer.h.3.ln_1.weight": np.ones(64, np.float32)})
    one_line_error(CheckpointError, bad, "unexpected", "h.3.ln_1.weight")


def test_untied_head(small, tmp_path):
    bad = rewrite(small[1], tmp_path,
                  change={"lm_head.weight": np.zeros((500, 64), np.float32)})
    one_line_error(ConfigError, bad, "lm_head.weight")


@pytest.mark.parametrize("option", [
    {"scale_attn_by_inverse_layer_idx": True}, {"reorder_and_upcast_attn": True},
    {"activation_function": "gelu"}, {"layer_norm_epsilon": 1e-6}, {"n_inner": 128},
    {"scale_attn_weights": False}, {"tie_word_embeddings": False}, {"vocab_size": 50260},
    {"model_type": "gpt_neo"}])
def test_unsupported_config(small, tmp_path, option):
    bad = rewrite(small[1], tmp_path, config=option)
    one_line_error(ConfigError, bad, next(iter(option)))


def test_bad_sources(tmp_path):
    one_line_error(CheckpointError, str(tmp_path / "no" / "such"), "no directory")
    (tmp_path / "f.txt").write_text("x")
    one_line_error(CheckpointError, str(tmp_path / "f.txt"), "is a file")
    one_line_error(CheckpointError, str(tmp_path), "config.json")


@pytest.mark.parametrize("content", ["[1]", "1", '"gpt2"', "null"])
def test_config_json_that_is_not_an_object(small, tmp_path, content):
    bad = rewrite(small[1], tmp_path)
    (tmp_path / "config.json").write_text(content)
    one_line_error(CheckpointError, bad, "config.json", "not an object")


def test_non_finite_weights_are_damage(small, tmp_path):
    t = load_file(os.path.join(small[1], "model.safetensors"))["transformer.h.0.ln_1.bias"].copy()
    t[3] = np.nan
    bad = rewrite(small[1], tmp_path, change={"transformer.h.0.ln_1.bias": t})
    one_line_error(CheckpointError, bad, "h_0/ln_1/bias", "NaN or inf", "damaged")


@pytest.mark.parametrize("name", ["resme", "GPT2", "gpt-2"])
def test_unknown_bare_names_are_not_sent_to_the_hub(name, monkeypatch):
    """A typo is not a hub id: said at once, without a network round trip."""
    monkeypatch.setattr(hf_files, "download",
                        lambda repo: pytest.fail(f"asked the hub for {repo}"))
    one_line_error(CheckpointError, name, "neither a directory nor a known model name",
                   "gpt2-medium", "distilgpt2", "org/name")


def test_hub_id_offline_is_one_line(monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    one_line_error(CheckpointError, "gpt-jax-tests/not-cached-anywhere", "Hugging Face Hub")


def test_zz_report_measured():
    """Print the observed differences together (pytest -s shows them)."""
    for label, (diff, scale) in MEASURED.items():
        print(f"{label:24s} max|Δ| {diff:.3g}  max|logits| {scale:.3g}  relative {diff / scale:.3g}")


def test_damaged_weight_files_are_one_line(small, tmp_path):
    bad = rewrite(small[1], tmp_path / "trunc")
    path = os.path.join(bad, "model.safetensors")
    os.truncate(path, os.path.getsize(path) - 1000)
    one_line_error(CheckpointError, bad, "damaged")
    sharded = rewrite(small[1], tmp_path / "sharded")
    os.rename(os.path.join(sharded, "model.safetensors"),
              os.path.join(sharded, "model-00001-of-00001.safetensors"))
    index = os.path.join(sharded, "model.safetensors.index.json")
    for content, words in (("[1]", "weight_map"), ('{"weight_map": {"x": "gone.safetensors"}}',
                                                   "gone.safetensors, listed in")):
        with open(index, "w") as f:
            f.write(content)
        one_line_error(CheckpointError, sharded, words)
    pt = tmp_path / "pt"
    pt.mkdir()
    shutil.copy(os.path.join(small[1], "config.json"), pt)
    (pt / "pytorch_model.bin").write_bytes(b"not a pickle")
    one_line_error(CheckpointError, str(pt), "pytorch_model.bin", "damaged")


def test_from_hf_on_a_train_out_dir_and_to_hf_of_nan(tmp_path):
    cfg = gpt_jax.GPTConfig(vocab_size=300, n_layer=1, n_head=2, n_embd=32, block_size=32)
    params = randomised_params(cfg, 1)
    gpt_jax.save_checkpoint(str(tmp_path / "out"), 1, params, cfg)
    one_line_error(CheckpointError, str(tmp_path / "out"), "is a train.py out_dir",
                   "load_checkpoint", "gpt_jax.hf export")
    params["wpe"]["embedding"] = params["wpe"]["embedding"].at[0, 0].set(np.inf)
    with pytest.raises(CheckpointError, match="wpe.weight holds NaN or inf"):
        gpt_jax.to_hf(params, cfg, str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()
