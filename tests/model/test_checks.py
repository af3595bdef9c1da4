"""gpt_jax.model.checks: params that do not match their config are named in one line. (The token-id
and generate() input checks are tested through their callers: test_scoring, test_generation.)"""
import jax
import pytest

from gpt_jax import UserError, init_params, log_probs
from gpt_jax.model.checks import check_params
from gpt_jax.model.stacking import stack_layers


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_generate_refuses_non_finite_params_in_any_weight_format(tiny_cfg, bad):
    """NaN weights decoded to [50256] * n, and int8 rounding hid them (the clean model's
    tokens came back): both are refused in one line, naming a leaf that holds them."""
    from gpt_jax import generate
    params = init_params(tiny_cfg, jax.random.key(0))
    broken = {**params, "h_1": {**params["h_1"], "mlp": {**params["h_1"]["mlp"], "c_fc": {
        **params["h_1"]["mlp"]["c_fc"],
        "kernel": params["h_1"]["mlp"]["c_fc"]["kernel"].at[3, 5].set(bad)}}}}
    for weights in (None, "int8"):
        with pytest.raises(UserError, match="NaN or inf .*h_1/mlp/c_fc/kernel") as e:
            generate(broken, tiny_cfg, [[1, 2]], 3, weights=weights)
        assert "\n" not in str(e.value)
    from gpt_jax.model.checks import check_finite
    assert check_finite(params) is params            # (generate's own tests use clean ones)


def test_the_finite_check_runs_once_per_params(tiny_cfg, monkeypatch):
    import gpt_jax.model.checks as checks
    params = init_params(tiny_cfg, jax.random.key(1))
    calls = []
    real = checks._all_finite
    monkeypatch.setattr(checks, "_all_finite", lambda p: calls.append(1) or real(p))
    for _ in range(3):
        checks.check_finite(params)
    assert len(calls) == 1
    checks.check_finite(init_params(tiny_cfg, jax.random.key(2)))   # other params: checked
    assert len(calls) == 2


def test_scoring_shares_the_params_check_and_takes_the_stacked_layout(tiny_cfg):
    """loglikelihood / token_logprobs with another config's params raised flax ScopeParam
    errors; now the same line as generate() (the stacked scan_layers layout still scores)."""
    import numpy as np
    from gpt_jax import loglikelihood, token_logprobs
    from gpt_jax.model.gpt import param_shapes
    tiny_cfg = tiny_cfg.replace(vocab_size=50304)    # token_logprobs needs <|endoftext|>
    # zeros of the right shapes: only the shapes are checked (no init to compile)
    params = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, np.float32),
                                    param_shapes(tiny_cfg))
    stacked = stack_layers(params, tiny_cfg.n_layer)
    assert check_params(stacked, tiny_cfg, stacked_ok=True) is stacked
    for wrong, fragment in ((dict(n_layer=1), "params have 2 layers, cfg.n_layer is 1"),
                            (dict(block_size=16), "block_size 32, cfg.block_size is 16")):
        cfg = tiny_cfg.replace(**wrong)
        for call in (lambda p: loglikelihood(p, cfg, [([1, 2], [3])]),
                     lambda p: token_logprobs(p, cfg, [1, 2, 3])):
            for p in (params, stacked):
                with pytest.raises(UserError, match=fragment) as e:
                    call(p)
                assert "\n" not in str(e.value)
