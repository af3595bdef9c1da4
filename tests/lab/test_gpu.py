"""What only a GPU can show: cuDNN attention, bfloat16 training, decoding and meshes on the GPU
(`pytest -m gpu`; `python bench.py --suite gpu` runs these first). Without a GPU every test
skips and says why.

Tolerances, stated where they are used, come from the number formats: bfloat16 keeps 8
significant bits (a rounding moves a value by up to 2^-9, 0.2%), and on Ampere and later GPUs
XLA runs float32 matmuls in TF32 by default (11 bits: 2^-12 per rounding). A wrong mask, cache
index or layout moves results by their own size, orders of magnitude above these bounds.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax.model.config import GPTConfig
from gpt_jax.generation.decoding import generate
from gpt_jax.model.gpt import GPT, attention_implementation
from gpt_jax.train.optimizer import make_optimizer
from gpt_jax.model.sharding import make_global_batch, make_mesh
from gpt_jax.train.state import new_state
from gpt_jax.train.steps import make_train_step
from gpt_jax.train.config import TrainConfig

from generation_reference import full_forward_logits, prompts_of, random_params

BACKEND = jax.default_backend()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(BACKEND != "gpu",
                                 reason=f"needs a GPU: JAX's backend here is {BACKEND}")]
CUDNN_CALL = "__cudnn$fmha"   # the custom-call targets of cuDNN's fused attention


def relative_error(a, ref) -> float:
    """max |a - ref| over max |ref|."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).max() / np.abs(ref).max())


# -- cuDNN attention ---------------------------------------------------------------------------

def attention_and_grads(q, k, v, g, implementation, dtype):
    """jax.nn.dot_product_attention (causal) on float32 q, k, v (B, T, H, D) cast to dtype,
    and the gradients of sum(out * g) with respect to q, k, v: all float32."""
    def out(q, k, v):
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        return jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                            implementation=implementation).astype(jnp.float32)

    def both(q, k, v):
        return out(q, k, v), jax.grad(lambda *a: jnp.sum(out(*a) * g), argnums=(0, 1, 2))(q, k, v)
    return jax.jit(both), both


def attention_inputs(shape=(2, 384, 12, 64)):
    keys = jax.random.split(jax.random.key(0), 4)
    # q, k, v hold bfloat16 values, so every path starts from the very same numbers
    q, k, v = (jax.random.normal(key, shape).astype(jnp.bfloat16).astype(jnp.float32)
               for key in keys[:3])
    return q, k, v, jax.random.normal(keys[3], shape)


def test_cudnn_attention_equals_xla_attention_in_bfloat16():
    """cuDNN's fused kernel and XLA's attention, both in bfloat16, against float32 attention
    on the same inputs: outputs and all three gradients within 2% of the largest value (XLA's
    own bfloat16 path is at 0.3-0.4%; cuDNN rounds the probabilities to bfloat16 too)."""
    q, k, v, g = attention_inputs()
    with jax.default_matmul_precision("highest"):
        ref, ref_grads = attention_and_grads(q, k, v, g, "xla", jnp.float32)[0](q, k, v)
    fn, raw = attention_and_grads(q, k, v, g, "cudnn", jnp.bfloat16)
    assert CUDNN_CALL in jax.jit(raw).lower(q, k, v).as_text()   # cuDNN really runs
    for impl in ("cudnn", "xla"):
        out, grads = attention_and_grads(q, k, v, g, impl, jnp.bfloat16)[0](q, k, v)
        assert relative_error(out, ref) < 0.02, impl
        for name, a, b in zip("qkv", grads, ref_grads):
            assert relative_error(a, b) < 0.02, (impl, name)


def test_auto_attention_runs_cudnn_in_bfloat16_and_xla_in_float32():
    """attn_impl="auto" compiles cuDNN's kernel into a bfloat16 model and XLA's into a float32
    one; the bfloat16 logits through cuDNN are as close to float32's as XLA's bfloat16 ones
    (within twice their error, or 1% of the largest logit)."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=128, block_size=256, vocab_size=512)
    params = random_params(cfg, seed=1, std=0.1)
    tokens = jax.random.randint(jax.random.key(2), (4, 256), 0, 512, jnp.int32)
    logits = {}
    for name, c in (("f32", cfg), ("bf16 auto", cfg.replace(dtype="bfloat16")),
                    ("bf16 xla", cfg.replace(dtype="bfloat16", attn_impl="xla"))):
        fwd = jax.jit(lambda p, x, c=c: GPT(c).apply({"params": p}, x))
        text = fwd.lower(params, tokens).as_text()
        assert (CUDNN_CALL in text) == (attention_implementation(c) == "cudnn"), name
        with jax.default_matmul_precision("highest" if name == "f32" else "default"):
            logits[name] = fwd(params, tokens)
    assert attention_implementation(cfg.replace(dtype="bfloat16")) == "cudnn"
    assert attention_implementation(cfg) is None
    err_cudnn = relative_error(logits["bf16 auto"], logits["f32"])
    err_xla = relative_error(logits["bf16 xla"], logits["f32"])
    assert err_cudnn <= max(2 * err_xla, 0.01), (err_cudnn, err_xla)


# -- bfloat16 training ---------------------------------------------------------------------------

def train_losses(cfg: GPTConfig, tc: TrainConfig, batches, mesh=None):
    """Loss and gradient norm of each step of make_train_step over batches (steps, 1, B, T+1),
    from the same initial state (key 0) whatever cfg's dtype or the mesh."""
    mesh = make_mesh(None, jax.devices()[:1]) if mesh is None else mesh
    tx, schedule = make_optimizer(tc)
    state = new_state(cfg, tx, mesh, seed=0)
    step = make_train_step(cfg, tx, schedule, mesh=mesh)
    out = []
    for b in batches:
        state, m = step(state, make_global_batch(b, mesh, b.shape))
        out.append((float(m["loss"]), float(m["grad_norm"])))
    return np.array(out)


def tracking_run():
    tc = TrainConfig.from_dict(dict(n_layer=4, n_head=4, n_embd=256, block_size=128,
                                    vocab_size=1024, batch_size=8, learning_rate=1e-3,
                                    warmup_iters=5, lr_decay_iters=1000, weight_decay=0.0))
    rng = np.random.default_rng(0)
    two = rng.integers(0, 1024, (2, 1, 8, 129), dtype=np.int32)
    return tc, two[np.arange(40) % 2]    # two batches in turn: the losses fall far


def test_bfloat16_train_step_tracks_float32():
    """40 steps of the full train step (cuDNN attention, bfloat16 matmuls, float32 params and
    Adam state) from the same state and batches as float32: the loss falls as far, and every
    step's loss stays within 5% (+0.05) of float32's (the same run's bfloat16 path on a CPU
    strays by up to 0.04 as the loss falls from 7 to 1; a wrong mask moves it by whole nats)."""
    tc, batches = tracking_run()
    f32 = train_losses(tc.model, tc, batches)
    bf16 = train_losses(tc.model.replace(dtype="bfloat16"), tc, batches)
    assert attention_implementation(tc.model.replace(dtype="bfloat16")) == "cudnn"
    assert np.isfinite(bf16).all()
    assert f32[-1, 0] < 0.5 * f32[0, 0] and bf16[-1, 0] < 0.5 * bf16[0, 0], (f32, bf16)
    np.testing.assert_allclose(bf16[:, 0], f32[:, 0], rtol=0.05, atol=0.05)


# -- decoding ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [("float32", 5e-3), ("bfloat16", 0.03)])
def test_cached_decode_equals_the_full_forward(dtype, tol):
    """generate()'s prefill and cached one-token steps on the GPU give the logits of a full
    forward pass over prompt + new tokens (cuDNN attention in bfloat16), within tol of the
    largest logit: float32 runs in TF32 here (1e-5 on a CPU), bfloat16 keeps 8 bits (0.9%
    on a CPU). Each greedy token is one the forward pass rates within 2 tol of its best."""
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=128, block_size=128, vocab_size=256, dtype=dtype)
    params = random_params(cfg, seed=3, std=0.1)
    prompts = prompts_of([5, 17, 1, 32], cfg.vocab_size)
    new, logits = generate(params, cfg, prompts, 24, temperature=0, return_logits=True)
    new, logits = np.asarray(new), np.asarray(logits)
    ref = full_forward_logits(params, cfg, prompts, new)
    scale = np.abs(ref).max()
    assert np.abs(logits - ref).max() <= tol * scale
    chosen = np.take_along_axis(ref, new[..., None], axis=-1)[..., 0]
    assert (ref.max(-1) - chosen).max() <= 2 * tol * scale
    assert len(np.unique(new)) > 10     # varied tokens, not one repeated


# -- several GPUs --------------------------------------------------------------------------------

@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 or more GPUs")
@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-4), ("bfloat16", 0.02)])
def test_mesh_train_step_equals_one_device(dtype, rtol):
    """The train step on data=N and fsdp=N meshes (N: the largest power of two <= the GPU
    count, at most 8) gives one device's losses and gradient norms, step by step: within 1e-4
    in float32 (the same TF32 products, summed in another order), 2% in bfloat16 (cuDNN
    attention on row shards)."""
    n = min(8, 1 << (jax.device_count().bit_length() - 1))
    tc = TrainConfig.from_dict(dict(n_layer=2, n_head=2, n_embd=128, block_size=64,
                                    vocab_size=512, batch_size=8, learning_rate=3e-3,
                                    warmup_iters=2, lr_decay_iters=100, dtype=dtype))
    batches = np.random.default_rng(1).integers(0, 512, (4, 1, 8, 65), dtype=np.int32)
    one = train_losses(tc.model, tc, batches)
    for spec in (f"data={n}", f"fsdp={n}"):
        got = train_losses(tc.model, tc, batches, make_mesh(spec, jax.devices()[:n]))
        np.testing.assert_allclose(got, one, rtol=rtol, err_msg=spec)
