"""The torch.compile peers of bench.py (gpt_jax/lab/bench/compiled.py, issue 29 item 1): a peer
row is fair only if it computes what ours does, and a machine without a C++ compiler gets a
"skipped" row, never a crash."""
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from gpt_jax.checkpoint.hf import to_transformers  # noqa: E402
from gpt_jax.generation.decoding import generate  # noqa: E402
from gpt_jax.lab.bench import compiled, decoding, training  # noqa: E402
from gpt_jax.lab.bench.harness import Context  # noqa: E402
from gpt_jax.lab.bench.peers import params_to_hf  # noqa: E402
from gpt_jax.model.config import GPTConfig  # noqa: E402
from gpt_jax.model.gpt import init_params  # noqa: E402
from gpt_jax.train.config import TrainConfig  # noqa: E402
from gpt_jax.train.loss import loss_fn  # noqa: E402

CFG = GPTConfig.from_preset("gpt2-tiny", vocab_size=512)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.key(0))


def hf_greedy(hf, prompts, n, mask=None, **kw):
    ids = torch.from_numpy(prompts)
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids) if mask is None else mask,
                          max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)
    return out[:, prompts.shape[1]:].numpy()


@pytest.mark.parametrize("batch", [1, 8])
def test_static_cache_greedy_tokens_equal_ours_and_dynamic_cache(params, batch):
    """HF's StaticCache path (the compiled peer's cache, run eager here: fast, no compiler)
    gives our greedy tokens, as its DynamicCache does, over 48 steps of a tiny random model."""
    prompts = np.random.default_rng(batch).integers(0, CFG.n_real_vocab, (batch, 8))
    ours = np.asarray(generate(params, CFG, prompts, 48, temperature=0))
    hf = params_to_hf(params, CFG)
    np.testing.assert_array_equal(hf_greedy(hf, prompts, 48), ours)
    np.testing.assert_array_equal(hf_greedy(hf, prompts, 48, cache_implementation="static"),
                                  ours)
    # a second call reuses the model's StaticCache size (generation/utils.py:2181-2185): the
    # same tokens, also for fewer new tokens than the cache holds
    np.testing.assert_array_equal(hf_greedy(hf, prompts, 5, cache_implementation="static"),
                                  ours[:, :5])


def test_nanogpt_peer_logits_and_loss_equal_hf_and_ours(params):
    """The nanoGPT-shaped peer on our weights: HF GPT2LMHeadModel's logits and our loss."""
    from gpt_jax.lab.bench.nanogpt import nanogpt_from_params
    tokens = np.random.default_rng(0).integers(0, CFG.n_real_vocab, (2, 17))
    x = torch.from_numpy(tokens[:, :-1].astype(np.int64))
    with torch.no_grad():
        ng = nanogpt_from_params(params, CFG)(x)
        hf = to_transformers(params, CFG)(input_ids=x).logits
    np.testing.assert_allclose(ng.numpy(), hf.numpy(), atol=2e-5, rtol=0)
    loss = torch.nn.functional.cross_entropy(ng.reshape(-1, ng.shape[-1]),
                                             torch.from_numpy(tokens[:, 1:].reshape(-1)))
    assert loss.item() == pytest.approx(float(loss_fn(params, CFG, tokens)), rel=1e-5)


@pytest.fixture
def no_compiler():
    """Inductor looks for a C++ compiler that is not there. torch's own config.patch, which
    puts the setting back (monkeypatch.setattr would delete it from torch's config module on
    the way out: the teardown of an attribute it did not find in __dict__)."""
    import torch._inductor.config as inductor_config
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        yield


def test_no_cxx_compiler_is_a_skipped_row_not_a_crash(params, no_compiler):
    """Without a C++ compiler (CI may have none), the train and decode sections each give a
    "skipped" row with the reason, and time no compiled peer."""
    ctx = Context(options={})
    reason = compiled.compile_unavailable(ctx)
    assert reason is not None and "C++ compiler" in reason
    rows = []
    hf = params_to_hf(params, CFG)
    prompts = np.zeros((1, 4), np.int64)
    assert decoding.static_peer(ctx, hf, prompts, 4, "b1", rows) == {}
    tc = TrainConfig.from_dict({"vocab_size": 512, "n_layer": 2, "n_head": 2, "n_embd": 64,
                                "block_size": 16, "batch_size": 2})
    assert training.compiled_peers(ctx, "tiny", params, CFG, tc, np.zeros((2, 17), np.int32),
                                   1.0, {}, {}, rows) == {}
    assert [(r.section, r.metric, r.unit) for r in rows] == [("decode", "skipped", "skip"),
                                                             ("train", "skipped", "skip")]
    assert all("C++ compiler" in r.config["reason"] for r in rows)
    off = compiled.compile_unavailable(Context(options={"compile_peers": False}))
    assert "--compile_peers false" in off


def test_a_failing_compile_is_a_skipped_row(params, monkeypatch):
    """Whatever torch.compile raises (inductor's errors are many) becomes the row's reason."""
    def broken(*args, **kwargs):
        raise RuntimeError("inductor fell over\nsecond line")
    monkeypatch.setattr(decoding, "static_generate", broken)
    monkeypatch.setattr(decoding, "compile_unavailable", lambda ctx, device="cpu": None)
    rows = []
    assert decoding.static_peer(Context(), params_to_hf(params, CFG), np.zeros((1, 4)), 4,
                                "b1", rows) == {}
    assert rows[0].config["reason"] == ("torch.compile failed: RuntimeError: inductor fell "
                                        "over")


@pytest.mark.slow
def test_compiled_static_cache_peer_tokens_equal_ours(params):
    """The bench's compiled peer itself (inductor, the decode forward compiled), batch 1:
    our greedy tokens. Skipped where torch.compile cannot run (no C++ compiler)."""
    ctx = Context(options={})
    reason = compiled.compile_unavailable(ctx)
    if reason is not None:
        pytest.skip(reason)
    prompts = np.random.default_rng(1).integers(0, CFG.n_real_vocab, (1, 8))
    ours = np.asarray(generate(params, CFG, prompts, 12, temperature=0))
    rows = []
    peer = decoding.static_peer(ctx, params_to_hf(params, CFG), prompts, 12, "b1", rows)
    assert rows == [], rows
    tokens_of, again, extra = peer["static"]
    np.testing.assert_array_equal(tokens_of(), ours)
    np.testing.assert_array_equal(again()[:, :], ours)   # a warm call: the same tokens
    assert extra["compile_mode"] == "default" and extra["first_call_s"] > 0
