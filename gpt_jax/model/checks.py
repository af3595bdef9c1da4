"""Host-side checks of what callers pass to the model's functions: params against a config,
token ids, finite weights, a causal config, plain numbers (generate()'s own settings are checked
in gpt_jax/generation/checks.py).

Each returns the value in one canonical form or raises a one-line UserError that says what to
pass instead, before anything is compiled or allocated: never an error from deep inside JAX.
"""
from __future__ import annotations

import functools
import numbers
import weakref
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.errors import TokenError, UserError
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.gpt import param_shapes
from gpt_jax.model.stacking import stack_layers, unstack_layers

# -- token ids and params --------------------------------------------------------------------

def check_token_ids(tokens, vocab_size: int, what: str = "tokens") -> np.ndarray:
    """tokens as a numpy int64 array, once every value is an integer id in [0, vocab_size).

    Floats are refused rather than truncated (1.7 would become 1, NaN a huge negative id);
    bools and text too. Any shape is returned as it is: callers check the shape they need."""
    if isinstance(tokens, (str, bytes)):
        raise TokenError(f"{what} must be integer token ids, not text: encode it first "
                         f"(gpt_jax.get_tokenizer().encode(text))")
    try:
        arr = np.asarray(tokens)
    except (ValueError, TypeError, OverflowError) as e:  # ragged nesting, odd objects
        raise TokenError(f"{what} must be integer token ids (a list of ints or an int array): "
                         f"{e}") from None
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind in "US":
            raise TokenError(f"{what} must be integer token ids, not text: encode it first "
                             f"(gpt_jax.get_tokenizer().encode(text))")
        flat = arr.reshape(-1)
        if arr.dtype.kind == "O":  # Python ints beyond int64, None, mixed types
            bad = next((x for x in flat if not (isinstance(x, (int, np.integer)) and
                                                not isinstance(x, bool) and 0 <= x < vocab_size)),
                       flat[0])
            raise TokenError(f"{what} must be integer token ids in [0, {vocab_size}), "
                             f"got {bad!r}")
        if arr.dtype.kind == "f":
            bad = next((x for x in flat if not float(x).is_integer()), flat[0]).item()
            raise TokenError(f"{what} must be integer token ids, got {arr.dtype} values such "
                             f"as {bad!r}: pass ints (a float id is never rounded for you)")
        raise TokenError(f"{what} must be integer token ids, got {arr.dtype} values")
    lo, hi = int(arr.min()), int(arr.max())  # Python ints: no overflow whatever the dtype
    if lo < 0 or hi >= vocab_size:
        raise TokenError(f"token id {lo if lo < 0 else hi} in {what} is outside the model's "
                         f"vocabulary (ids 0..{vocab_size - 1}, vocab_size {vocab_size})")
    return arr.astype(np.int64, copy=False)


@functools.lru_cache(maxsize=16)
def _expected(cfg: GPTConfig) -> tuple:
    """(treedef, leaf shapes, {"h_0/attn/c_attn/kernel": shape, ...}) of cfg's params (one
    abstract init per config)."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    flat, _ = jax.tree_util.tree_flatten_with_path(shapes)
    return (treedef, [tuple(x.shape) for x in leaves],
            {_path_name(path): tuple(x.shape) for path, x in flat})


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def check_causal(cfg: GPTConfig, what: str,
                 todo: str = "train with causal=True for a model that can score or decode"
                 ) -> None:
    """Refuse a bidirectional model (cfg.causal false) where the result means p(x_t | x_<t):
    generation over a KV cache (a new token changes every earlier key and value, so a cache
    cannot hold them) and scoring (its log-probs would read the very token they score)."""
    if not cfg.causal:
        raise UserError(f"{what} needs a causal model, and this one is bidirectional "
                        f"(causal=False: each position sees the tokens after it); {todo}")


@functools.lru_cache(maxsize=16)
def _expected_stacked(cfg: GPTConfig) -> tuple:
    """(treedef, leaf shapes) of cfg's params in scan_layers' stacked layout."""
    shapes = jax.eval_shape(lambda p: stack_layers(p, cfg.n_layer), param_shapes(cfg))
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    return treedef, [tuple(x.shape) for x in leaves]


def check_params(params, cfg: GPTConfig, *, stacked_ok: bool = False):
    """params, once their names and shapes are those GPT(cfg) expects (dtypes may differ).
    stacked_ok: scan_layers' stacked layout ("h") is accepted too (the scorer runs both).

    A cfg that does not match the params would otherwise fail deep inside flax with a
    ScopeParamShapeError, or not at all where shapes happen to broadcast. Shapes cannot show
    everything: n_head (the same kernels split into other heads) and the dtypes are not in
    them, so pass the cfg the params were made with."""
    if not isinstance(cfg, GPTConfig):
        raise UserError(f"cfg must be a gpt_jax.GPTConfig, got {type(cfg).__name__}")
    if not isinstance(params, Mapping):
        raise UserError(f"params must be the parameter dict that init_params, load_checkpoint "
                        f"or from_hf return, got {type(params).__name__}")
    if "h" in params and "h_0" not in params:
        if not stacked_ok:
            raise UserError("params hold the stacked scan_layers layout: pass "
                            "gpt_jax.model.stacking.unstack_layers(params)")
        want_def, want_shapes = _expected_stacked(cfg)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        if treedef == want_def and all(getattr(x, "shape", None) == s
                                       for x, s in zip(leaves, want_shapes)):
            return params
        try:   # the GPT-2 layout's shapes, to say what differs
            unstacked = jax.eval_shape(unstack_layers, dict(params))
        except Exception:  # leaves without a common layer axis
            raise UserError("params hold a stacked (scan_layers) layout that does not match "
                            "cfg: pass the cfg the params were made with") from None
        check_params(unstacked, cfg)
        return params
    want_def, want_shapes, want = _expected(cfg)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    if treedef == want_def and all(getattr(x, "shape", None) == s
                                   for x, s in zip(leaves, want_shapes)):
        return params                        # the common case: no path names built
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    got = {_path_name(path): tuple(getattr(x, "shape", ())) for path, x in flat}
    if got == want:                          # the same names in another container type
        return params
    layers = sum(1 for k in params if isinstance(k, str) and k.startswith("h_"))
    wte, wpe = got.get("wte/embedding"), got.get("wpe/embedding")
    wrong = [n for n in want if n in got and got[n] != want[n]]
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    if wte and len(wte) == 2 and wte[0] != cfg.vocab_size:
        why = f"params have vocab_size {wte[0]}, cfg.vocab_size is {cfg.vocab_size}"
    elif wte and len(wte) == 2 and wte[1] != cfg.n_embd:
        why = f"params are {wte[1]} wide, cfg.n_embd is {cfg.n_embd}"
    elif wpe and len(wpe) == 2 and wpe[0] != cfg.block_size:
        why = f"params have block_size {wpe[0]}, cfg.block_size is {cfg.block_size}"
    elif layers != cfg.n_layer:
        why = f"params have {layers} layers, cfg.n_layer is {cfg.n_layer}"
    elif wrong:
        why = f"{wrong[0]} has shape {got[wrong[0]]} in params, cfg gives {want[wrong[0]]}"
    elif missing:
        why = f"params lack {missing[0]}" + (" (cfg.bias is true)"
                                             if missing[0].endswith("bias") else "")
    else:
        why = f"params have {extra[0]}, which cfg does not" + (
            " (cfg.bias is false)" if extra[0].endswith("bias") else "")
    raise UserError(f"params do not match cfg: {why}. Pass the cfg the params were made with "
                    f"(load_checkpoint and from_hf return both)")



@jax.jit
def _all_finite(params) -> jax.Array:
    """One bool: no NaN or inf in any floating-point leaf (one pass over the weights)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(params)
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


_finite_seen: list = []   # weak references to the leaves of the last params found finite


def check_finite(params):
    """params, once every value is finite: NaN or inf weights give NaN logits, which decode to
    one token repeated (and int8 rounding can hide them altogether), so they are refused.
    One jitted reduction per params: the last params found finite are remembered (by their
    leaves' identity, weakly, as jax Arrays cannot change in place), so repeated calls with
    the same params cost nothing."""
    if not isinstance(params, Mapping):
        return params                        # check_params says what params must be
    leaves = jax.tree_util.tree_leaves(params)
    if len(_finite_seen) == len(leaves) and all(r() is x for r, x in zip(_finite_seen, leaves)):
        return params
    out = _all_finite(params)
    if not bool(np.asarray(out.addressable_data(0))):
        flat, _ = jax.tree_util.tree_flatten_with_path(params)
        bad = next((_path_name(p) for p, x in flat
                    if np.issubdtype(x.dtype, np.inexact)
                    and not bool(np.asarray(_all_finite([x]).addressable_data(0)))), "a leaf")
        raise UserError(f"params hold NaN or inf values ({bad} has some): the model cannot "
                        f"give meaningful output; load an earlier checkpoint")
    _finite_seen[:] = [weakref.ref(x) for x in leaves] if all(
        isinstance(x, jax.Array) for x in leaves) else []
    return params


# -- numbers as callers pass them (Python and numpy values: no device work) ---------------

def scalar(x, integer: bool):
    """x as a Python int (integer) or float, or None where it is not such a number: bools and
    strings are not numbers here; 0-d numpy or jax arrays are."""
    if isinstance(x, (bool, np.bool_)):
        return None
    if integer and isinstance(x, numbers.Integral):
        return int(x)
    if not integer and isinstance(x, numbers.Real):
        return float(x)
    if isinstance(x, (np.ndarray, jax.Array)) and x.shape == () and jax.dtypes.issubdtype(
            x.dtype, np.integer if integer else np.number):  # (not a PRNG key's dtype)
        return int(x) if integer else float(x)
    return None


def check_positive_int(value, name: str, hint: str = "") -> int:
    """value as a Python int >= 1 (numpy and 0-d array integers too; bools, floats and strings
    are not), or a one-line UserError naming the argument (hint: what else it may be)."""
    n = scalar(value, integer=True)
    if n is None or n < 1:
        raise UserError(f"{name} must be a positive integer{hint}, got {value!r}")
    return n
