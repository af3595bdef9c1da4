import jax
import pytest
from jax.sharding import PartitionSpec as P

from gpt_jax import ConfigError
from gpt_jax.model.sharding import fsdp_spec, make_mesh, parse_mesh


@pytest.mark.parametrize("spec,n,expected", [
    (None, 8, {"data": 8, "fsdp": 1}), ("", 1, {"data": 1, "fsdp": 1}),
    ("fsdp=8", 8, {"data": 1, "fsdp": 8}), ("data=2,fsdp=4", 8, {"data": 2, "fsdp": 4}),
    ("data=-1,fsdp=2", 8, {"data": 4, "fsdp": 2}), ("fsdp=-1", 4, {"data": 1, "fsdp": 4})])
def test_parse_mesh(spec, n, expected):
    assert parse_mesh(spec, n) == expected


@pytest.mark.parametrize("spec,message", [
    ("data=3", "multiply to 3, but there are 8"), ("model=8", "axes data and fsdp"),
    ("data=-1,fsdp=-1", "only one axis"), ("data=x", "must be an integer"),
    ("data=0", "positive"), ("data=3,fsdp=-1", "do not divide"), ("data=8,data=1", "twice")])
def test_parse_mesh_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_mesh(spec, 8)


def test_fsdp_spec_shards_largest_divisible_dimension():
    assert fsdp_spec((50257, 768), 8) == P(None, "fsdp")   # vocab 50257 is odd
    assert fsdp_spec((50304, 768), 8) == P("fsdp", None)   # the larger one when both divide
    assert fsdp_spec((768, 3072), 8) == P(None, "fsdp")
    assert fsdp_spec((7,), 8) == P() and fsdp_spec((), 8) == P()
    assert fsdp_spec((768, 3072), 1) == P()


def test_single_device_mesh_has_both_axes():
    mesh = make_mesh(None)
    assert mesh.axis_names == ("data", "fsdp") and mesh.shape["fsdp"] == 1
    assert mesh.shape["data"] == len(jax.devices())


def test_parse_mesh_grammar_only():
    # TrainConfig checks --mesh before any device exists: n_devices=None skips the counts
    assert parse_mesh("data=-1,fsdp=2", None) == {"data": -1, "fsdp": 2}
    assert parse_mesh("", None) == {"data": -1, "fsdp": 1}
    with pytest.raises(ConfigError, match="axes data and fsdp"):
        parse_mesh("tensor=2", None)
