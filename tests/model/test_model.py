import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import GPT, GPTConfig, UserError, init_params
from gpt_jax.model.gpt import PADDED_LOGIT
from gpt_jax.model.stacking import stack_layers


def forward(cfg, params, tokens, **kw):
    return GPT(cfg).apply({"params": params}, tokens, **kw)


def random_tokens(cfg, shape, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, cfg.n_real_vocab, jnp.int32)


def test_param_names_follow_gpt2(tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    assert set(params) == {"wte", "wpe", "h_0", "h_1", "ln_f"}  # no separate lm_head
    assert set(params["h_0"]) == {"ln_1", "attn", "ln_2", "mlp"}
    assert set(params["h_0"]["attn"]) == {"c_attn", "c_proj"}
    assert params["h_0"]["attn"]["c_attn"]["kernel"].shape == (64, 192)  # (in, out) like Conv1D
    assert params["wte"]["embedding"].shape == (256, 64)


def test_causality(tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    tokens = random_tokens(tiny_cfg, (2, 16))
    t = 7
    changed = tokens.at[:, t + 1:].set((tokens[:, t + 1:] + 1) % tiny_cfg.vocab_size)
    a, b = forward(tiny_cfg, params, tokens), forward(tiny_cfg, params, changed)
    np.testing.assert_allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-6, rtol=0)
    assert np.abs(a[:, t + 1:] - b[:, t + 1:]).max() > 1e-3
    # ...and the token at t itself does move the logits at t.
    at_t = tokens.at[:, t].set((tokens[:, t] + 1) % tiny_cfg.vocab_size)
    c = forward(tiny_cfg, params, at_t)
    np.testing.assert_allclose(a[:, :t], c[:, :t], atol=1e-6, rtol=0)
    assert np.abs(a[:, t] - c[:, t]).max() > 1e-3


def test_lm_head_is_tied_to_wte(tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    tokens = jnp.array([[1, 2, 3, 4]], jnp.int32)
    v = 200  # a token that is not in the input: its wte row reaches the logits only via the head
    # A random bump, not a constant one: LayerNorm's output sums to zero over the channels, so a
    # constant added to the row would move the tied logit only by rounding.
    delta = 0.5 * jax.random.normal(jax.random.key(1), (tiny_cfg.n_embd,))
    bumped = dict(params, wte={"embedding": params["wte"]["embedding"].at[v].add(delta)})
    a, state = forward(tiny_cfg, params, tokens, capture_intermediates=True,
                       mutable=["intermediates"])
    b = forward(tiny_cfg, bumped, tokens)
    x_final = state["intermediates"]["ln_f"]["__call__"][0]            # (B, T, C)
    expected = np.asarray(jnp.einsum("btc,c->bt", x_final, delta))
    assert np.abs(expected).min() > 0.05          # far above float32 noise on any CPU
    np.testing.assert_allclose(np.asarray(b - a)[..., v], expected, rtol=1e-4, atol=1e-5)
    others = np.delete(np.asarray(b - a), v, axis=-1)
    assert np.abs(others).max() <= 1e-6           # no other logit reads row v


def test_init_statistics():
    cfg = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=64, vocab_size=2048)
    params = init_params(cfg, jax.random.key(0))
    resid = 0.02 / np.sqrt(2 * cfg.n_layer)
    for i in range(cfg.n_layer):
        h = params[f"h_{i}"]
        for name, std in (("attn/c_attn", 0.02), ("attn/c_proj", resid),
                          ("mlp/c_fc", 0.02), ("mlp/c_proj", resid)):
            mod, sub = name.split("/")
            w = np.asarray(h[mod][sub]["kernel"])
            assert abs(w.std() - std) < 0.05 * std, (i, name, w.std(), std)
            assert abs(w.mean()) < 0.05 * std
            assert np.all(np.asarray(h[mod][sub]["bias"]) == 0)
        for ln in ("ln_1", "ln_2"):
            assert np.all(np.asarray(h[ln]["scale"]) == 1) and np.all(np.asarray(h[ln]["bias"]) == 0)
    for emb in ("wte", "wpe"):
        assert abs(np.asarray(params[emb]["embedding"]).std() - 0.02) < 0.001


def test_jit_matches_eager(tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    tokens = random_tokens(tiny_cfg, (2, 32))
    eager = forward(tiny_cfg, params, tokens)
    jitted = jax.jit(lambda p, t: forward(tiny_cfg, p, t))(params, tokens)
    assert eager.dtype == jitted.dtype == jnp.float32 and eager.shape == (2, 32, 256)
    np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_stays_close_to_float32(tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    tokens = random_tokens(tiny_cfg, (2, 32))
    f32 = forward(tiny_cfg, params, tokens)
    bf16 = forward(tiny_cfg.replace(dtype="bfloat16"), params, tokens)
    assert bf16.dtype == jnp.float32  # logits are float32 whatever the compute dtype
    # bfloat16 keeps 8 mantissa bits (~0.4% per rounding); a couple of layers of them stay
    # within 2% of the largest logit.
    scale = float(np.abs(f32).max())
    err = float(np.abs(f32 - bf16).max())
    assert err <= 0.02 * max(1.0, scale), (err, scale)
    assert err > 0  # the bfloat16 path really ran in bfloat16


def test_bfloat16_params(tiny_cfg):
    cfg = tiny_cfg.replace(param_dtype="bfloat16", dtype="bfloat16")
    params = init_params(cfg, jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(params))
    assert forward(cfg, params, random_tokens(cfg, (1, 8))).dtype == jnp.float32


def test_dropout_only_when_not_deterministic(tiny_cfg):
    cfg = tiny_cfg.replace(dropout=0.2)
    params = init_params(cfg, jax.random.key(0))
    tokens = random_tokens(cfg, (2, 16))
    eval_a = forward(cfg, params, tokens)
    eval_b = forward(cfg, params, tokens, deterministic=True)
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_allclose(eval_a, forward(tiny_cfg, params, tokens), rtol=1e-6, atol=1e-6)
    train = lambda seed: forward(cfg, params, tokens, deterministic=False,
                                 rngs={"dropout": jax.random.key(seed)})
    assert np.abs(train(0) - eval_a).max() > 1e-3
    assert np.abs(train(0) - train(1)).max() > 1e-3
    np.testing.assert_array_equal(train(3), train(3))
    with pytest.raises(Exception):  # no dropout RNG given
        forward(cfg, params, tokens, deterministic=False)


def test_attention_dropout_path_equals_fused_path_without_dropout(tiny_cfg):
    from gpt_jax.model.gpt import attention, attention_with_dropout, causal_mask
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 8, 2, 16)) for i in range(3))
    fused = attention(q, k, v, is_causal=True)
    explicit = attention_with_dropout(q, k, v, causal_mask(8))
    np.testing.assert_allclose(fused, explicit, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_causal_attention_equals_jax_attention_and_its_gradients(dtype, rtol):
    # causal_attention (the XLA path of training and full forwards) against
    # jax.nn.dot_product_attention and the explicit softmax path: outputs and gradients of a
    # random projection of the output, with scores large enough (x3) that the normaliser and
    # the masked entries matter.
    from gpt_jax.model.gpt import attention, attention_with_dropout, causal_attention, causal_mask
    q, k, v, w = (jax.random.normal(jax.random.key(i), (2, 12, 3, 16)) for i in range(4))
    q = 3 * q
    loss = lambda f: lambda q, k, v: jnp.sum(f(q.astype(dtype), k.astype(dtype),
                                               v.astype(dtype)).astype(jnp.float32) * w)
    paths = {"jax": lambda q, k, v: attention(q, k, v, is_causal=True),
             "explicit": lambda q, k, v: attention_with_dropout(q, k, v, causal_mask(12))}
    ours = jax.value_and_grad(loss(causal_attention), argnums=(0, 1, 2))(q, k, v)
    assert causal_attention(q.astype(dtype), k, v).dtype == dtype
    for name, f in paths.items():
        ref = jax.value_and_grad(loss(f), argnums=(0, 1, 2))(q, k, v)
        for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(ref)):
            scale = float(jnp.max(jnp.abs(b)))
            np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale, err_msg=name)


@pytest.mark.parametrize("vocab_size", [256, 50304])
def test_targets_give_the_loss_of_the_logits(tiny_cfg, vocab_size):
    # GPT(..., targets=) returns the mean cross-entropy of the logits it would return without
    # them, with the same gradients (50304: the 47 padded ids past the tokenizer's 50257).
    from gpt_jax.train.loss import cross_entropy
    cfg = tiny_cfg.replace(vocab_size=vocab_size, n_layer=1)
    params = init_params(cfg, jax.random.key(0))
    params = jax.tree_util.tree_map(
        lambda a: a + 0.1 * jax.random.normal(jax.random.key(5), a.shape), params)
    tokens = random_tokens(cfg, (2, 17))
    fused = lambda p: forward(cfg, p, tokens[:, :-1], targets=tokens[:, 1:])
    plain = lambda p: cross_entropy(forward(cfg, p, tokens[:, :-1]), tokens[:, 1:])
    (l1, g1), (l0, g0) = jax.value_and_grad(fused)(params), jax.value_and_grad(plain)(params)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(b))))
    with pytest.raises(ValueError, match="targets"):
        forward(cfg, params, tokens, targets=tokens, logits_at=0)


def test_sequence_longer_than_block_size_is_an_error(tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    with pytest.raises(UserError, match="exceeds the model's block_size 32"):
        forward(tiny_cfg, params, jnp.zeros((1, 33), jnp.int32))


def test_padded_vocab_gets_no_probability():
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50304)
    params = init_params(cfg, jax.random.key(0))
    logits = forward(cfg, params, jnp.array([[1, 2, 3]], jnp.int32))
    assert np.all(np.asarray(logits[..., 50257:]) == PADDED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1)
    assert float(probs[..., 50257:].sum()) == 0.0


@pytest.mark.parametrize("remat,scan_layers", [(True, False), (False, True), (True, True)])
def test_remat_and_scan_layers_compute_the_same_function(remat, scan_layers):
    from gpt_jax.model.stacking import unstack_layers
    cfg = GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=128)
    params = init_params(cfg, jax.random.key(0))
    tokens = random_tokens(cfg, (2, 16))

    def loss(model, p):
        return -jax.nn.log_softmax(model.apply({"params": p}, tokens))[..., 0].mean()

    ref, ref_grad = jax.value_and_grad(lambda p: loss(GPT(cfg), p))(params)
    model = GPT(cfg, remat=remat, scan_layers=scan_layers)
    p = stack_layers(params, cfg.n_layer) if scan_layers else params
    value, grad = jax.jit(jax.value_and_grad(lambda q: loss(model, q)))(p)
    if scan_layers:
        assert p["h"]["attn"]["c_attn"]["kernel"].shape == (3, 32, 96)
        grad = unstack_layers(grad)
    np.testing.assert_allclose(value, ref, rtol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           grad, ref_grad)


def test_auto_attention_picks_cudnn_only_where_cudnn_takes_the_inputs(monkeypatch):
    """auto chose cuDNN for any 16-bit config on a GPU, so a head_dim that is not a multiple
    of 8 (or above 128) raised inside jax.nn.dot_product_attention; it gets XLA's now."""
    from gpt_jax.model.gpt import attention_implementation
    gpu = GPTConfig(n_layer=1, n_head=2, n_embd=128, dtype="bfloat16")   # head_dim 64
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert attention_implementation(gpu) == "cudnn"
    assert attention_implementation(gpu.replace(dtype="float16")) == "cudnn"
    assert attention_implementation(gpu.replace(dtype="float32")) is None
    assert attention_implementation(gpu.replace(n_head=8, n_embd=96)) is None      # head_dim 12
    assert attention_implementation(gpu.replace(n_head=1, n_embd=256)) is None     # head_dim 256
    assert attention_implementation(gpu.replace(attn_impl="xla")) is None
    assert attention_implementation(gpu.replace(attn_impl="cudnn", dtype="float32")) == "cudnn"
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert attention_implementation(gpu) is None
