"""gpt_jax.decode through generate(): the cached one-token step reproduces GPT's full forward
pass (float32 and bfloat16), and the no-cache reference decoder agrees."""
import jax.numpy as jnp
import numpy as np
import pytest

from gpt_jax import generation
from gpt_jax.generation import generate
from gpt_jax.decode import decode_weights

from generation_reference import (CFG, LENGTHS, N_NEW, full_forward_logits, prompts_of,
                                  random_params, tiny)


@pytest.mark.parametrize("cfg_kw,lengths,n_new", [
    (dict(n_layer=1, n_head=1, n_embd=16), [5], 9),
    (dict(), LENGTHS, N_NEW),
    (dict(n_head=4, bias=False), [16, 3], 8),
])
def test_cached_logits_equal_full_forward(cfg_kw, lengths, n_new):
    cfg = tiny(**cfg_kw)
    params = random_params(cfg)
    prompts = prompts_of(lengths, cfg.vocab_size)
    new, logits = generate(params, cfg, prompts, n_new, temperature=0, return_logits=True)
    new, logits = np.asarray(new), np.asarray(logits)
    assert new.shape == (len(lengths), n_new) and new.dtype == np.int32
    ref = full_forward_logits(params, cfg, prompts, new)
    assert np.abs(logits - ref).max() <= 1e-5 * np.abs(ref).max()
    np.testing.assert_array_equal(new, ref.argmax(-1))  # greedy tokens identical
    if cfg == CFG:  # the jitted no-cache reference decoder (bench.py's baseline) agrees too
        tokens, pad = generation.left_pad(prompts, cfg)
        np.testing.assert_array_equal(
            new, generation.generate_uncached(params, tokens, pad, cfg=cfg, max_new_tokens=n_new))


def test_bfloat16_decode_streams_bfloat16_weights_and_tracks_the_forward():
    """With a bfloat16 compute dtype the loop reads weights cast once to bfloat16 (half the
    bytes) and its logits follow a bfloat16 full forward pass within bfloat16 rounding."""
    cfg = tiny(dtype="bfloat16")
    params = random_params(cfg, seed=5)
    layout = decode_weights(params, cfg)
    assert layout["h_0"]["mlp"]["c_fc"]["kernel"].dtype == jnp.bfloat16
    assert layout["wte"]["embedding"].dtype == jnp.bfloat16
    assert layout["h_0"]["ln_1"]["scale"].dtype == jnp.float32   # LayerNorm runs in float32
    prompts = prompts_of(LENGTHS, cfg.vocab_size)
    new, logits = generate(params, cfg, prompts, N_NEW, temperature=0, return_logits=True)
    ref = full_forward_logits(params, cfg, prompts, np.asarray(new))
    err = np.abs(np.asarray(logits) - ref).max() / np.abs(ref).max()
    assert err < 0.03, err
    f32 = full_forward_logits(params, CFG, prompts, np.asarray(new))
    assert np.abs(ref - f32).max() / np.abs(f32).max() > 1e-4  # bfloat16 really ran
