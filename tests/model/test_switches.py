"""The chapter's model switches (GPTConfig norm, tie_embeddings, causal, init, final_ln): each changes what it
says and nothing else; the cached decoder honours them or refuses; only GPT-2 exports."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import GPTConfig, GPT, generate, init_params, load_checkpoint, save_checkpoint
from gpt_jax.errors import ConfigError, UserError
from gpt_jax.generation.decoding import generate_uncached
from gpt_jax.generation.prompts import left_pad
from gpt_jax.checkpoint.hf import to_hf
from gpt_jax.model.gpt import count_params
from gpt_jax.evaluation.scoring import log_probs
from gpt_jax.train.config import resolve_config

BASE = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=256)


def forward(cfg, params, tokens, **kw):
    """GPT(cfg).apply, jitted (op-by-op dispatch of a whole model is slow)."""
    return jax.jit(lambda p, t: GPT(cfg).apply({"params": p}, t, **kw))(params, tokens)


def randomised(cfg, seed=0):
    """Params with every tensor random (LayerNorms and biases included): a swapped or skipped
    LayerNorm then shows in the logits."""
    params = init_params(cfg, jax.random.key(seed))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree_util.tree_unflatten(tree, [
        x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def test_post_ln_and_untied_decode_with_cache_as_full_recomputation():
    cfg = GPTConfig(**BASE, norm="post", tie_embeddings=False)
    params = randomised(cfg)
    prompts = [[5, 6, 7, 8, 9], [1, 2]]
    new, logits = generate(params, cfg, prompts, max_new_tokens=12, temperature=0,
                           return_logits=True)
    tokens, pad = left_pad(prompts, cfg)
    ref = generate_uncached(params, tokens, pad, cfg=cfg, max_new_tokens=12)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(ref))
    # and each step's logits are the full forward's over the row alone
    for b, p in enumerate(prompts):
        seq = jnp.asarray([p + list(np.asarray(new[b]))], jnp.int32)
        full = forward(cfg, params, seq)[0, len(p) - 1:-1]
        np.testing.assert_allclose(np.asarray(logits[b]), np.asarray(full), rtol=1e-4,
                                   atol=1e-4)


def test_switches_change_the_function_and_untied_adds_one_head():
    base = GPTConfig(**BASE)
    params = randomised(base)
    tokens = jnp.arange(1, 17)[None]
    ref = forward(base, params, tokens)
    post = forward(base.replace(norm="post"), params, tokens)
    assert float(jnp.max(jnp.abs(post - ref))) > 1e-2
    untied = base.replace(tie_embeddings=False)
    assert count_params(untied) - count_params(base) == base.vocab_size * base.n_embd
    up = init_params(untied, jax.random.key(0))
    assert up["lm_head"]["embedding"].shape == (base.vocab_size, base.n_embd)
    assert abs(float(jnp.std(up["lm_head"]["embedding"])) - 0.02) < 2e-3   # GPT-2's init
    # an untied head equal to wte is the tied model; the fused loss reads lm_head
    same = {**params, "lm_head": {"embedding": params["wte"]["embedding"]}}
    np.testing.assert_allclose(forward(untied, same, tokens), ref, rtol=1e-5,
                               atol=1e-5)
    other = {**params, "lm_head": {"embedding": params["wte"]["embedding"][::-1]}}
    loss = lambda cfg, p: forward(cfg, p, tokens[:, :-1], targets=tokens[:, 1:])
    assert abs(float(loss(untied, same)) - float(loss(base, params))) < 1e-5
    assert abs(float(loss(untied, other)) - float(loss(base, params))) > 1e-2
    g = jax.grad(lambda p: loss(untied, p))(other)
    assert float(jnp.max(jnp.abs(g["lm_head"]["embedding"]))) > 0


def test_future_tokens_change_no_earlier_logit_unless_bidirectional():
    cfg = GPTConfig(**BASE)
    params = randomised(cfg)
    a = jax.random.randint(jax.random.key(3), (2, 32), 0, 256)
    b = a.at[:, 20:].set(jax.random.randint(jax.random.key(4), (2, 12), 0, 256))
    for causal in (True, False):
        c = cfg.replace(causal=causal)
        la, lb = forward(c, params, jnp.concatenate([a, b])).reshape(2, 2, 32, -1)
        change = float(jnp.max(jnp.abs(la[:, :20] - lb[:, :20])))
        assert (change == 0.0) if causal else change > 1e-2


def test_bidirectional_model_refuses_cache_and_scoring_but_decodes_uncached():
    cfg = GPTConfig(**BASE, causal=False)
    params = randomised(cfg)
    with pytest.raises(UserError, match="generate_uncached"):
        generate(params, cfg, [[1, 2, 3]], max_new_tokens=4)
    with pytest.raises(UserError, match="bidirectional"):
        log_probs(params, cfg, [[1, 2, 3]])
    tokens, pad = left_pad([[1, 2, 3], [4, 5, 6, 7, 8]], cfg)
    out = generate_uncached(params, tokens, pad, cfg=cfg, max_new_tokens=3)
    # step 0 equals the model run on the prompt alone (everything after it masked)
    for b, p in enumerate([[1, 2, 3], [4, 5, 6, 7, 8]]):
        alone = forward(cfg, params, jnp.asarray([p]))[0, -1]
        assert int(out[b, 0]) == int(jnp.argmax(alone))


def test_only_gpt2_exports_to_hugging_face(tmp_path):
    for switch in (dict(norm="post"), dict(tie_embeddings=False), dict(causal=False),
                   dict(final_ln=False)):
        cfg = GPTConfig(**BASE, **switch)
        with pytest.raises(ConfigError, match="only GPT-2 exports"):
            to_hf(init_params(cfg, jax.random.key(0)), cfg, str(tmp_path / "hf"))


def test_flags_and_checkpoints_carry_the_switches(tmp_path):
    tc = resolve_config("cpu-small", {"norm": "post", "tie_embeddings": False,
                                      "causal": False})
    assert (tc.model.norm, tc.model.tie_embeddings, tc.model.causal) == ("post", False, False)
    assert tc.to_dict()["norm"] == "post"
    with pytest.raises(ConfigError, match="norm"):
        resolve_config("cpu-small", {"norm": "sandwich"})
    cfg = GPTConfig(**BASE, norm="post", tie_embeddings=False)
    params = init_params(cfg, jax.random.key(0))
    save_checkpoint(str(tmp_path), 1, params, cfg)
    p2, cfg2 = load_checkpoint(str(tmp_path))
    assert cfg2 == cfg and "lm_head" in p2


def test_xavier_init_is_glorot_uniform_without_residual_scaling():
    """init="xavier": every Dense kernel U(+-sqrt(6 / (fan_in + fan_out))), so std
    sqrt(2 / (fan_in + fan_out)), the residual projections included (no 1/sqrt(2L)); embeddings
    stay N(0, 0.02); GPT-2's init keeps c_proj at 0.02 / sqrt(2L)."""
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=32, vocab_size=256)
    xav = init_params(cfg.replace(init="xavier"), jax.random.key(0))
    gpt2 = init_params(cfg, jax.random.key(0))
    C = cfg.n_embd
    for path, (fan_in, fan_out) in {("attn", "c_attn"): (C, 3 * C), ("attn", "c_proj"): (C, C),
                                    ("mlp", "c_fc"): (C, 4 * C), ("mlp", "c_proj"): (4 * C, C)}.items():
        k = np.concatenate([np.asarray(xav[f"h_{i}"][path[0]][path[1]]["kernel"]).ravel()
                            for i in range(cfg.n_layer)])
        bound = np.sqrt(6 / (fan_in + fan_out))
        assert np.abs(k).max() <= bound and np.abs(k).max() > 0.99 * bound   # uniform's edge
        np.testing.assert_allclose(k.std(), np.sqrt(2 / (fan_in + fan_out)), rtol=0.02)
        assert abs(k.mean()) < 0.01 * bound
    np.testing.assert_allclose(np.std(xav["wte"]["embedding"]), 0.02, rtol=0.05)
    proj = np.asarray(gpt2["h_0"]["mlp"]["c_proj"]["kernel"])
    np.testing.assert_allclose(proj.std(), 0.02 / np.sqrt(2 * cfg.n_layer), rtol=0.05)


def test_final_ln_false_has_no_ln_f_and_the_head_reads_the_residual():
    cfg = GPTConfig(**BASE, norm="post", final_ln=False)
    params = randomised(cfg)
    assert "ln_f" not in params
    assert count_params(GPTConfig(**BASE)) - count_params(cfg.replace(norm="pre")) == 2 * 32
    tokens = jnp.arange(1, 17)[None]
    is_last = lambda mdl, _: mdl.name == f"h_{cfg.n_layer - 1}"
    logits, state = jax.jit(lambda p, t: GPT(cfg).apply(
        {"params": p}, t, capture_intermediates=is_last))(params, tokens)
    x = state["intermediates"][f"h_{cfg.n_layer - 1}"]["__call__"][0][0]   # (B, T, C)
    ref = jnp.einsum("btc,vc->btv", x, params["wte"]["embedding"])
    np.testing.assert_allclose(np.asarray(logits), np.asarray(ref), rtol=1e-5, atol=1e-5)
    # the same params with an identity-free ln_f added are another function
    with_ln = forward(cfg.replace(final_ln=True),
                      {**params, "ln_f": {"scale": jnp.ones(32), "bias": jnp.zeros(32)}}, tokens)
    assert float(jnp.max(jnp.abs(with_ln - logits))) > 1e-2
    # the cached decoder honours it too
    new, dl = generate(params, cfg, [[5, 6, 7]], max_new_tokens=4, temperature=0,
                       return_logits=True)
    seq = jnp.asarray([[5, 6, 7] + list(np.asarray(new[0]))], jnp.int32)
    np.testing.assert_allclose(np.asarray(dl[0]), np.asarray(forward(cfg, params, seq)[0, 2:-1]),
                               rtol=1e-4, atol=1e-4)


def test_default_init_and_final_ln_are_gpt2():
    cfg = GPTConfig(**BASE)
    assert (cfg.init, cfg.final_ln, cfg.is_gpt2) == ("gpt2", True, True)
    assert cfg.replace(init="xavier").is_gpt2              # the init is not architecture
    assert not cfg.replace(final_ln=False).is_gpt2
    with pytest.raises(ConfigError, match="init"):
        GPTConfig(**BASE, init="kaiming")
    with pytest.raises(ConfigError, match="final_ln"):
        GPTConfig(**BASE, final_ln="no")
    tc = resolve_config("cpu-small", {"norm": "post", "init": "xavier", "final_ln": False})
    assert (tc.model.init, tc.model.final_ln) == ("xavier", False)
