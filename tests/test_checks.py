"""gpt_jax.checks: params that do not match their config are named in one line. (The token-id
and generate() input checks are tested through their callers: test_scoring, test_generation.)"""
import jax
import pytest

from gpt_jax import UserError, init_params, log_probs
from gpt_jax.checks import check_params
from gpt_jax.stacking import stack_layers


def test_params_that_do_not_match_cfg_are_named_in_one_line(tiny_cfg):
    params = init_params(tiny_cfg, jax.random.key(0))
    assert check_params(params, tiny_cfg) is params
    tokens = [[1, 2, 3]]
    for wrong, fragment in ((dict(n_layer=3), "params have 2 layers, cfg.n_layer is 3"),
                            (dict(n_embd=128), "params are 64 wide, cfg.n_embd is 128"),
                            (dict(vocab_size=300), "vocab_size 256, cfg.vocab_size is 300"),
                            (dict(block_size=64), "block_size 32, cfg.block_size is 64"),
                            (dict(bias=False), "(cfg.bias is false)")):
        cfg = tiny_cfg.replace(**wrong)
        with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")) as e:
            log_probs(params, cfg, tokens)
        assert "\n" not in str(e.value) and "Pass the cfg the params were made with" in str(e.value)
    no_bias = init_params(tiny_cfg.replace(bias=False), jax.random.key(0))
    with pytest.raises(UserError, match=r"lack .*bias \(cfg.bias is true\)"):
        check_params(no_bias, tiny_cfg)
    with pytest.raises(UserError, match="unstack_layers"):
        check_params(stack_layers(params, tiny_cfg.n_layer), tiny_cfg)
    with pytest.raises(UserError, match="GPTConfig"):
        check_params(params, {"n_layer": 2})
    with pytest.raises(UserError, match="parameter dict"):
        check_params([params], tiny_cfg)
