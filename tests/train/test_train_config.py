"""The run configuration (gpt_jax/train/config.py): checked values, config files, flat keys."""
import pytest

from gpt_jax.train.config import TrainConfig


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
    from gpt_jax.train.config import resolve_config
    f = tmp_path / "c.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match="out_dir|data|learning_rate"):
        resolve_config(str(f))


# train.py's keys, in --help order: the CLI contract of docs/design.md (flags, config files and
# checkpoints' meta["train_config"] all use them, flat).
KEYS = ["out_dir", "data", "init_from", "resume_step", "n_layer", "n_head", "n_embd",
        "block_size", "vocab_size", "dropout", "bias", "dtype", "norm", "tie_embeddings", "causal",
        "init", "final_ln", "batch_size", "gradient_accumulation_steps", "max_iters", "lr_schedule", "decay_frac",
        "learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "weight_decay", "beta1",
        "beta2", "grad_clip", "skip_loss_z", "skip_grad_z", "skip_warmup", "eval_interval",
        "eval_iters", "eval_only", "eval_tasks", "eval_task_limit", "log_interval", "log_to",
        "profile_steps", "seed", "mesh", "remat", "scan_layers"]


def test_flat_keys_outside_a_gptconfig_inside():
    """The model's keys form tc.model (a GPTConfig, which checks them); everything outside
    (flags, files, meta["train_config"]) sees one flat set of keys, each with its help."""
    import json
    from gpt_jax.model.config import GPTConfig
    from gpt_jax.errors import ConfigError
    assert list(TrainConfig.fields()) == KEYS
    assert all(f.metadata.get("help") for f in TrainConfig.fields().values())
    tc = TrainConfig.from_dict({"n_layer": 3, "n_head": 3, "n_embd": 96, "batch_size": 5})
    assert tc.model == GPTConfig(n_layer=3, n_head=3, n_embd=96, block_size=256)
    d = tc.to_dict()
    assert list(d) == KEYS and (d["n_layer"], d["batch_size"]) == (3, 5)
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == tc
    assert tc.replace(n_layer=5, max_iters=7).model.n_layer == 5
    assert tc.tokens_per_step == 5 * 256
    with pytest.raises(ConfigError, match="n_embd"):
        TrainConfig.from_dict({"n_embd": 100, "n_head": 3})
    with pytest.raises(ConfigError, match="unknown key.*n_layers"):
        TrainConfig.from_dict({"n_layers": 3})
    for dtype in ("float16", "float64"):   # float64 was told "one of ..., float16"
        with pytest.raises(ConfigError, match=f"dtype must be float32 or bfloat16 .*'{dtype}'"):
            TrainConfig.from_dict({"dtype": dtype})
    with pytest.raises(ConfigError, match="only the model fields"):
        TrainConfig(model=GPTConfig(n_layer=1, attn_impl="xla"))
