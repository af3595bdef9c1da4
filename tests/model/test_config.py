import pytest

from gpt_jax import ConfigError, GPTConfig, count_params


@pytest.mark.parametrize("name,expected", [
    ("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
    ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_preset_param_counts(name, expected):
    # jax.eval_shape under the hood: no 1.5B-parameter allocation.
    assert count_params(GPTConfig.from_preset(name)) == expected


def test_preset_overrides_and_derived_values():
    cfg = GPTConfig.from_preset("gpt2", vocab_size=50304, dropout=0.1)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (12, 12, 768, 1024)
    assert cfg.vocab_size == 50304 and cfg.n_real_vocab == 50257 and cfg.head_dim == 64
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("kwargs,field", [
    (dict(n_embd=100, n_head=3), "n_embd"), (dict(n_layer=0), "n_layer"),
    (dict(vocab_size=-5), "vocab_size"), (dict(block_size=1.5), "block_size"),
    (dict(dtype="float64"), "dtype"), (dict(param_dtype="int8"), "param_dtype"),
    (dict(dropout=1.0), "dropout"), (dict(attn_impl="flash"), "attn_impl")])
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        GPTConfig(**kwargs)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="unknown preset 'gpt3'.*gpt2-medium"):
        GPTConfig.from_preset("gpt3")


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError, match="n_embed"):
        GPTConfig.from_dict({"n_embed": 64})


def test_architecture_diff():
    a = GPTConfig.from_preset("gpt2-tiny")
    assert a.architecture_diff(a.replace(dropout=0.1, dtype="bfloat16")) == []
    assert a.architecture_diff(a.replace(n_layer=3)) == ["n_layer: 2 vs 3"]
