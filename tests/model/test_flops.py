"""gpt_jax/model/flops.py: FLOPs per token and the datasheet peaks MFU is quoted against."""
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.flops import datasheet_flops, flops_per_token
from gpt_jax.model.gpt import count_params


def test_datasheet_peak_names_the_right_part():
    """The table is searched by substring, first key first: an H100 PCIe (756 TFLOP/s dense
    bf16) was quoted against the SXM part's 989, and an L40 against the L4's 121."""
    assert datasheet_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert datasheet_flops("NVIDIA H100 PCIe") == 756e12
    assert datasheet_flops("NVIDIA H100 NVL") == 835e12
    assert datasheet_flops("NVIDIA H200") == 989e12
    assert datasheet_flops("NVIDIA GH200 480GB") == 989e12
    assert datasheet_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert datasheet_flops("NVIDIA L40") == 181e12
    assert datasheet_flops("NVIDIA L40S") == 362e12
    assert datasheet_flops("NVIDIA L4") == 121e12
    assert datasheet_flops("TPU v5 lite") == 197e12
    assert datasheet_flops("cpu") is None


def test_flops_per_token_of_gpt2_124m():
    """6N + 12 L C T with N = every parameter but wpe (nanoGPT's 123.69M for 124M with the
    padded vocabulary): wte, 12 blocks of 12 C^2 weights + 13 C biases and norms, ln_f."""
    cfg = GPTConfig(vocab_size=50304)
    n = count_params(cfg, non_embedding=True)
    assert n == 50304 * 768 + 12 * (12 * 768 ** 2 + 13 * 768) + 2 * 768 == 123_689_472
    assert flops_per_token(cfg, 1024, n) == 6 * n + 12 * 12 * 768 * 1024
