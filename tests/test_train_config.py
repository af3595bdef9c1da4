"""The run configuration (gpt_jax/train_config.py): checked values, config files, flat keys."""
import pytest

from gpt_jax.train_config import TrainConfig


@pytest.mark.parametrize("field, value", [
    ("learning_rate", float("nan")), ("learning_rate", float("inf")), ("min_lr", float("nan")),
    ("weight_decay", float("inf")), ("beta2", float("nan")), ("grad_clip", float("inf")),
    ("seed", 2**31), ("seed", 99999999999999999999), ("out_dir", 5), ("data", ["x"]),
    ("init_from", ""), ("resume_step", 3), ("resume_step", -2)])
def test_config_refuses_non_finite_and_mistyped_values(field, value):
    from gpt_jax.errors import ConfigError
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("content", ['{"out_dir": 5}', '{"data": ["x"]}',
                                     '{"learning_rate": 1' + '0' * 400 + '}',
                                     '{"learning_rate": NaN}'])
def test_config_file_values_of_the_wrong_type(tmp_path, content):
    from gpt_jax.errors import ConfigError
    from gpt_jax.train_config import resolve_config
    f = tmp_path / "c.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match="out_dir|data|learning_rate"):
        resolve_config(str(f))
