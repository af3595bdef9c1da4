"""Where Hugging Face GPT-2 weights are read from: a local directory or a hub id (downloaded
into the hub's cache), and the tensors in its safetensors file(s) or pytorch_model.bin, each
read only when asked for. gpt_jax/checkpoint/hf.py maps them onto our parameters.
"""
from __future__ import annotations

import json
import os
import re

from gpt_jax.errors import CheckpointError, UserError

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"   # sharded checkpoints
TORCH_FILE = "pytorch_model.bin"
HUB_PATTERNS = [CONFIG_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX, "model-*.safetensors"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")   # "openai-community/gpt2"
# The hub's GPT-2 models without an org prefix; any other bare word is a typo, not a hub id
# (asking the hub about it would wait on the network, then blame the network).
KNOWN_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")


def hub_name_ok(source: str) -> bool:
    """Whether source may name a hub model: a known GPT-2 name or an org/name id."""
    return source in KNOWN_MODELS or bool(HUB_ID.match(source))


def download(repo_id: str) -> str:
    """Hub id -> local snapshot directory with config.json + safetensors (cached by the hub)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"{repo_id!r} is not a local directory, and fetching it from the "
                        f"Hugging Face Hub needs huggingface_hub: pip install huggingface_hub")
    try:
        return snapshot_download(repo_id, allow_patterns=HUB_PATTERNS)
    except Exception as e:  # offline, not cached, unknown id, gated, hub down, ...
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"cannot fetch {repo_id!r} from the Hugging Face Hub "
                              f"({type(e).__name__}: {why}); check the id and the network, "
                              f"or pass a local directory with config.json and "
                              f"model.safetensors") from None


def resolve_source(source) -> str:
    """A local HF directory as is; a hub id downloaded (or taken from the hub cache)."""
    source = os.fspath(source)
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{source} is a file: pass the directory that holds "
                              f"{CONFIG_FILE} and {SAFETENSORS_FILE}")
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise CheckpointError(f"no directory {source}: pass a Hugging Face GPT-2 directory "
                              f"or a hub id such as 'gpt2'")
    if not hub_name_ok(source):
        raise CheckpointError(f"{source!r} is neither a directory nor a known model name "
                              f"({', '.join(KNOWN_MODELS)}) nor an org/name hub id")
    return download(source)


def read_tensors(directory: str) -> dict:
    """{file's tensor name: (shape, fetch)}; fetch() gives the array, read only when asked,
    so the (1, 1, 1024, 1024) mask buffers of hub files are never loaded."""
    index = os.path.join(directory, SAFETENSORS_INDEX)
    single = os.path.join(directory, SAFETENSORS_FILE)
    if os.path.isfile(single) or os.path.isfile(index):
        from safetensors import safe_open  # framework="flax": reads bf16 too, needs no torch
        if os.path.isfile(single):
            files = [single]
        else:
            try:
                with open(index) as f:
                    files = sorted({os.path.join(directory, str(v))
                                    for v in json.load(f)["weight_map"].values()})
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
                raise CheckpointError(f"cannot read {index} ({type(e).__name__}): it needs a "
                                      f"\"weight_map\" object of tensor -> file") from None
        out = {}
        for path in files:
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}, listed in {SAFETENSORS_INDEX}, is missing")
            try:
                handle = safe_open(path, framework="flax")
            except Exception as e:
                raise CheckpointError(f"cannot read {path} ({type(e).__name__}: "
                                      f"{str(e)[:200]}): the file is damaged") from None
            for name in handle.keys():
                shape = tuple(handle.get_slice(name).get_shape())
                out[name] = (shape, lambda h=handle, n=name: h.get_tensor(n))
        return out
    torch_path = os.path.join(directory, TORCH_FILE)
    if os.path.isfile(torch_path):
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{directory} holds only {TORCH_FILE}: install torch to read "
                                  f"it, or convert it to {SAFETENSORS_FILE}") from None
        # weights_only=True: a pickle from the internet must not be able to run code.
        try:
            state = torch.load(torch_path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise TypeError(f"it holds a {type(state).__name__}, not a state dict")
        except Exception as e:  # noqa: BLE001 - unpickling errors of every kind
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:150]
            raise CheckpointError(f"cannot read {torch_path} ({type(e).__name__}: {why}): it is "
                                  f"damaged, or not a plain state dict of tensors") from None
        return {k: (tuple(v.shape), lambda v=v: v.float().numpy()) for k, v in state.items()}
    raise CheckpointError(f"{directory} holds no {SAFETENSORS_FILE} (or {TORCH_FILE}): "
                          f"pass a Hugging Face GPT-2 directory")
