"""Hugging Face GPT-2 weights: import (from_hf), export (to_hf), and the table between them.

GPT-2's Conv1D stores weights as (in, out), the same layout as flax's Dense kernel, so every
tensor maps over unchanged: no transposes, no splits (c_attn keeps q|k|v concatenated along its
output axis in both). What needs care is everything around the tensors:
- hub files name tensors with or without a `transformer.` prefix and may carry the `attn.bias`
  (causal mask) / `attn.masked_bias` buffers, which are not parameters;
- the LM head is tied to wte; a file that stores `lm_head.weight` must store a copy of wte;
- config.json options this model does not implement must be refused, not silently ignored,
  or the logits would differ with no error anywhere.

    params, cfg = from_hf("path/to/hf_dir")   # or a hub id such as "gpt2" when online
    to_hf(params, cfg, "path/out")             # config.json + model.safetensors
    python -m gpt_jax.hf export OUT_DIR HF_DIR  # a train.py checkpoint -> an HF directory
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import jax
import jax.numpy as jnp
from flax import traverse_util

from gpt_jax.model.config import DTYPES, TOKENIZER_VOCAB_SIZE, GPTConfig
from gpt_jax.errors import CheckpointError, ConfigError, UserError
from gpt_jax.checkpoint.hf_files import CONFIG_FILE, SAFETENSORS_FILE, read_tensors, resolve_source
from gpt_jax.checkpoint.integrity import first_non_finite

LAYER_NORM_EPS = 1e-5                                 # fixed in gpt_jax.model.gpt._layer_norm
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # all the tanh approximation
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers, not weights
PREFIX = "transformer."


# -- the one table --------------------------------------------------------------------------
def tensor_table(cfg: GPTConfig) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """[(HF name without `transformer.`, our param path, shape)] for every GPT-2 tensor.

    Conv1D weights are (in, out) like our Dense kernels; LayerNorm weight is our `scale`.
    wte has cfg.n_real_vocab rows on the HF side (padded rows never leave gpt_jax).
    """
    V, P, C = cfg.n_real_vocab, cfg.block_size, cfg.n_embd
    table = [("wte.weight", ("wte", "embedding"), (V, C)),
             ("wpe.weight", ("wpe", "embedding"), (P, C))]
    for i in range(cfg.n_layer):
        h, o = f"h.{i}", f"h_{i}"
        table += [
            (f"{h}.ln_1.weight", (o, "ln_1", "scale"), (C,)),
            (f"{h}.ln_1.bias", (o, "ln_1", "bias"), (C,)),
            (f"{h}.attn.c_attn.weight", (o, "attn", "c_attn", "kernel"), (C, 3 * C)),
            (f"{h}.attn.c_attn.bias", (o, "attn", "c_attn", "bias"), (3 * C,)),
            (f"{h}.attn.c_proj.weight", (o, "attn", "c_proj", "kernel"), (C, C)),
            (f"{h}.attn.c_proj.bias", (o, "attn", "c_proj", "bias"), (C,)),
            (f"{h}.ln_2.weight", (o, "ln_2", "scale"), (C,)),
            (f"{h}.ln_2.bias", (o, "ln_2", "bias"), (C,)),
            (f"{h}.mlp.c_fc.weight", (o, "mlp", "c_fc", "kernel"), (C, 4 * C)),
            (f"{h}.mlp.c_fc.bias", (o, "mlp", "c_fc", "bias"), (4 * C,)),
            (f"{h}.mlp.c_proj.weight", (o, "mlp", "c_proj", "kernel"), (4 * C, C)),
            (f"{h}.mlp.c_proj.bias", (o, "mlp", "c_proj", "bias"), (C,)),
        ]
    table += [("ln_f.weight", ("ln_f", "scale"), (C,)),
              ("ln_f.bias", ("ln_f", "bias"), (C,))]
    return table


def _names(names, limit: int = 5) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# -- config.json <-> GPTConfig -------------------------------------------------------------
def config_from_hf(hf: dict, where: str, dtype: Optional[str] = None) -> GPTConfig:
    """GPTConfig from a GPT-2 config.json; anything we would compute differently is an error."""
    def bad(what: str):
        raise ConfigError(f"{where}/{CONFIG_FILE}: {what}, which gpt_jax's GPT-2 does not "
                          f"implement; use a standard GPT-2 checkpoint")

    if not isinstance(hf, dict):
        kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(
            type(hf), "a number")
        raise CheckpointError(f"{where}/{CONFIG_FILE} holds {kind}, not an object: it is not "
                              f"a GPT-2 config")
    if hf.get("model_type", "gpt2") != "gpt2":
        bad(f"model_type is {hf['model_type']!r}, not 'gpt2'")
    for key in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
        if not isinstance(hf.get(key), int):
            raise CheckpointError(f"{where}/{CONFIG_FILE} lacks integer {key!r}: "
                                  f"it is not a GPT-2 config")
    act = hf.get("activation_function", "gelu_new")
    if act not in GELU_TANH:
        bad(f"activation_function is {act!r} (only the tanh GELU, 'gelu_new', is supported)")
    eps = hf.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if eps != LAYER_NORM_EPS:
        bad(f"layer_norm_epsilon is {eps} (only {LAYER_NORM_EPS})")
    n_inner = hf.get("n_inner")
    if n_inner not in (None, 4 * hf["n_embd"]):
        bad(f"n_inner is {n_inner} (only 4 * n_embd = {4 * hf['n_embd']})")
    for key, ours in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("reorder_and_upcast_attn", False), ("add_cross_attention", False),
                      ("tie_word_embeddings", True)):
        if hf.get(key, ours) != ours:
            bad(f"{key} is {hf[key]!r} (only {ours!r})")
    if hf["vocab_size"] > TOKENIZER_VOCAB_SIZE:
        # Our model treats ids >= 50257 as padding (logit -1e9): added tokens would vanish.
        bad(f"vocab_size is {hf['vocab_size']} (at most GPT-2's {TOKENIZER_VOCAB_SIZE} real "
            f"tokens; larger vocabularies are padding in gpt_jax)")
    try:
        return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"],
                         n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                         bias=True, dtype=dtype or "float32", param_dtype="float32")
    except ConfigError as e:
        raise ConfigError(f"{where}/{CONFIG_FILE}: {e}") from None


def config_to_hf(cfg: GPTConfig) -> dict:
    """The config.json transformers.GPT2LMHeadModel needs for cfg (padded vocab dropped)."""
    V = cfg.n_real_vocab
    eot = TOKENIZER_VOCAB_SIZE - 1 if V == TOKENIZER_VOCAB_SIZE else None  # <|endoftext|>
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": V, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "add_cross_attention": False, "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eot, "dtype": "float32",
    }


def params_from_tensors(tensors: dict, cfg: GPTConfig, where: str) -> dict:
    """Our params pytree (float32) from {file name: (shape, fetch)}, checking every name and
    shape against tensor_table(cfg)."""
    found, lm_head = {}, None
    for raw, entry in tensors.items():
        name = raw[len(PREFIX):] if raw.startswith(PREFIX) else raw
        if name.endswith(BUFFER_SUFFIXES):
            continue                                  # causal-mask buffers, not weights
        if name == "lm_head.weight":
            lm_head = entry                           # tied to wte: checked below
            continue
        if name in found:
            raise CheckpointError(f"{where}: tensor {name} appears twice (with and without "
                                  f"{PREFIX!r}); the checkpoint is malformed")
        found[name] = entry
    table = tensor_table(cfg)
    expected = {name for name, _, _ in table}
    missing, extra = expected - set(found), set(found) - expected
    if missing:
        raise CheckpointError(f"{where}: missing tensor(s) {_names(missing)} for the "
                              f"{cfg.n_layer}-layer model config.json describes; the checkpoint "
                              f"is incomplete or does not match its config")
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor(s) {_names(extra)}: not GPT-2 "
                              f"weights for this config.json (more layers? another model?)")
    flat = {}
    for name, path, shape in table:
        got = found[name][0]
        if got != shape:
            raise CheckpointError(f"{where}: tensor {name} has shape {got}, expected {shape} "
                                  f"from config.json; the checkpoint does not match its config")
        flat[path] = jnp.asarray(found[name][1](), jnp.float32)
    params = traverse_util.unflatten_dict(flat)
    if lm_head is not None:
        # Our head is wte itself; a separate lm_head would be silently replaced.
        head = np.asarray(lm_head[1](), np.float32)
        if head.shape != params["wte"]["embedding"].shape or not np.array_equal(
                head, np.asarray(params["wte"]["embedding"])):
            raise ConfigError(f"{where}: lm_head.weight differs from wte.weight (an untied LM "
                              f"head), which gpt_jax does not implement")
    return params


# -- import ---------------------------------------------------------------------------------
def from_hf(source, dtype: Optional[str] = None) -> tuple[dict, GPTConfig]:
    """Load Hugging Face GPT-2 weights (GPT2LMHeadModel's names and Conv1D layout).

    Args:
      source: a local directory (config.json + model.safetensors, sharded safetensors or
        pytorch_model.bin, read with weights_only=True) or a hub id such as "gpt2" (downloaded
        into the Hugging Face cache; needs the network unless cached).
      dtype: the compute dtype of the returned cfg ("float32", the default, or "bfloat16");
        params are float32 either way.

    Returns:
      (params, cfg): params in gpt_jax's layout (kernels (in, out), wte (V, C)), cfg the
      GPTConfig read from config.json.

    Raises:
      CheckpointError: missing or damaged files, tensors of the wrong names or shapes, NaN/inf
        values, a train.py out_dir passed by mistake.
      UserError: a hub id while offline (one line that says so).
    """
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    directory = resolve_source(source)
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        if os.path.isdir(os.path.join(directory, "checkpoints")):
            raise CheckpointError(f"{directory} is a train.py out_dir, not a Hugging Face "
                                  f"directory: load it with gpt_jax.load_checkpoint, or export "
                                  f"it (python -m gpt_jax.hf export {directory} HF_DIR)")
        raise CheckpointError(f"{directory} has no {CONFIG_FILE}: pass a Hugging Face GPT-2 "
                              f"directory (as written by save_pretrained or to_hf)")
    try:
        with open(config_path) as f:
            hf_config = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {config_path}: {e}") from None
    cfg = config_from_hf(hf_config, directory, dtype)
    params = params_from_tensors(read_tensors(directory), cfg, directory)
    bad = first_non_finite(params)
    if bad is not None:
        raise CheckpointError(f"{directory}: tensor {bad} holds NaN or inf values; the weights "
                              f"are damaged")
    return params, cfg


# -- export ---------------------------------------------------------------------------------
def hf_tensors(params, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """Our params as GPT-2's float32 tensors, named as GPT2LMHeadModel's state dict
    (`transformer.` prefix; padded vocab rows dropped; the head stays tied, so no lm_head)."""
    if not cfg.bias:
        raise ConfigError("cannot export a model with bias=false: GPT-2 (and transformers' "
                          "GPT2LMHeadModel) has biases in every Dense and LayerNorm; train "
                          "with bias=true to export")
    if not cfg.is_gpt2:
        raise ConfigError(f"cannot export this model: Hugging Face's GPT-2 is Pre-LN, tied, "
                          f"causal and has ln_f, and this one has norm={cfg.norm}, "
                          f"tie_embeddings={cfg.tie_embeddings}, causal={cfg.causal}, "
                          f"final_ln={cfg.final_ln}; only GPT-2 exports")
    flat = traverse_util.flatten_dict(params)
    table = tensor_table(cfg)
    extra = set(flat) - {path for _, path, _ in table}
    if extra:
        raise CheckpointError(f"params hold entries GPT-2 has no tensor for: "
                              f"{_names('/'.join(p) for p in extra)} (stacked layers? export "
                              f"the unstacked layout)")
    tensors = {}
    for name, path, shape in table:
        if path not in flat:
            raise CheckpointError(f"params lack {'/'.join(path)} (for {name}); they do not "
                                  f"match the config")
        x = np.asarray(jax.device_get(flat[path]), np.float32)
        if name == "wte.weight":
            expect = (cfg.vocab_size, cfg.n_embd)
            if x.shape == expect:
                x = x[: cfg.n_real_vocab]             # padded rows (never predicted) go
        if x.shape != shape:
            raise CheckpointError(f"params {'/'.join(path)} has shape {x.shape}, expected "
                                  f"{shape} for {name}")
        tensors[PREFIX + name] = np.ascontiguousarray(x)
    return tensors


def check_target(out_dir: str, overwrite: bool) -> None:
    """Refuse to write into a directory that holds anything, unless overwrite."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir} is a file, not a directory: pass a directory to write the "
                        f"Hugging Face files to")
    if not overwrite and os.path.isdir(out_dir) and os.listdir(out_dir):
        raise UserError(f"{out_dir} is not empty: pass an empty or new directory (or "
                        f"overwrite=True / --overwrite to replace its {CONFIG_FILE} and "
                        f"{SAFETENSORS_FILE})")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def to_hf(params, cfg: GPTConfig, out_dir: str, *, overwrite: bool = False) -> str:
    """Write a Hugging Face GPT-2 directory that GPT2LMHeadModel.from_pretrained loads with
    nothing missing or unexpected.

    Args:
      params: the model's params (GPT-2 layout); padded vocab rows (ids >= 50257) are dropped.
      cfg: their GPTConfig (written as config.json).
      out_dir: a new or empty directory.
      overwrite: replace config.json and model.safetensors in a non-empty out_dir.

    Returns:
      out_dir. Each file is written to a temporary name and renamed, so a failed export (a
      full disk) never leaves half a file under the real name; files get the usual
      permissions (0666 less the umask).

    Raises:
      CheckpointError: out_dir not empty (without overwrite), not writable, or params that do
        not fit cfg / hold NaN or inf.
    """
    from safetensors.numpy import save_file
    tensors = hf_tensors(params, cfg)
    bad = first_non_finite(tensors)
    if bad is not None:
        raise CheckpointError(f"tensor {bad} holds NaN or inf values: nothing exported")
    check_target(out_dir, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    mode = 0o666 & ~_umask()
    written = []
    try:
        path = os.path.join(out_dir, SAFETENSORS_FILE)
        # format=pt: transformers reads this metadata to decide how to load the file.
        save_file(tensors, path + ".tmp", metadata={"format": "pt"})
        written.append(path + ".tmp")
        os.chmod(path + ".tmp", mode)   # safetensors creates its file 0600
        cpath = os.path.join(out_dir, CONFIG_FILE)
        with open(cpath + ".tmp", "w") as f:
            written.append(cpath + ".tmp")
            json.dump(config_to_hf(cfg), f, indent=2)
        os.replace(path + ".tmp", path)
        os.replace(cpath + ".tmp", cpath)
    except OSError as e:
        for tmp in written:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise UserError(f"cannot write {out_dir}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - safetensors reports I/O errors as its own type
        for tmp in written + [os.path.join(out_dir, SAFETENSORS_FILE + ".tmp")]:
            if os.path.exists(tmp):
                os.remove(tmp)
        raise UserError(f"cannot write {out_dir}: {str(e).strip()[:200]}") from None
    return out_dir


def to_transformers(params, cfg: GPTConfig):
    """A transformers.GPT2LMHeadModel (PyTorch, float32) holding the same weights: the peer
    for parity tests and benchmarks, built in memory without a file."""
    import torch
    import transformers
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_to_hf(cfg)))
    state = {k: torch.tensor(v) for k, v in hf_tensors(params, cfg).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # lm_head.weight is tied to wte (not in our tensors); the rest must all be there.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise CheckpointError(f"transformers model mismatch: missing {missing}, "
                              f"unexpected {unexpected}")
    model.tie_weights()
    return model.eval()


# -- command line ---------------------------------------------------------------------------
