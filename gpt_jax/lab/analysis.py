"""The measurements behind docs/analysis.md: gpt_jax against Hugging Face's modeling_gpt2.py
and nanoGPT, point by point, each difference measured rather than asserted.

    python -m gpt_jax.cli.analysis [--only params,init,...] [--json FILE] [--hf false]

Sections (SECTIONS): params (tied vs untied counts), layout (Conv1D (in, out) vs nn.Linear
(out, in): transposes and batch-1 product speed), init (each weight group's std against
GPT-2's 0.02 and 0.02/sqrt(2L), Hugging Face's own, and what the residual-projection scaling
does to the residual stream), parity (logits and the shifted loss against transformers), tying
(the tied gradient is the sum of the embedding's and the head's), masking (is_causal's
top-left alignment at a decode step), dropout (sites, and the cost of dropout on), decay (weight
decay masks: ours by name, nanoGPT's by ndim, the HF Trainer's by name and layer type),
attention and cache (timed: analysis_speed.py), hf (Hugging Face's masks, caches and
generate() observed at run time: analysis_hf.py). Widths: GPT-2 124M where it is cheap (counts,
init, parity), small ones for timings. Each section returns a JSON-able dict; main prints it
and writes them all to --json.
"""
from __future__ import annotations

import functools
import math
import platform
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import gpt_jax.lab.analysis_speed as speed
from gpt_jax.lab.analysis_hf import hf_behaviour_section
from gpt_jax.checkpoint.hf import config_to_hf, tensor_table, to_transformers
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.flops import flops_per_token
from gpt_jax.model.gpt import GPT, Block, count_params, init_params, mask_padded_vocab, param_shapes
from gpt_jax.model.stacking import stack_layers
from gpt_jax.train.loss import cross_entropy, loss_fn
from gpt_jax.train.optimizer import decay_mask

GPT2 = GPTConfig.from_preset("gpt2")


def _path(path) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in path)


def randomised(params, key, scale: float = 0.02):
    """params with every leaf moved by N(0, scale): GPT-2's init has zero biases and unit
    LayerNorms, with which a parity check cannot tell ln_1 from ln_2 (docs/design.md)."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


def hf_config(cfg: GPTConfig, **kw):
    import transformers
    return transformers.GPT2Config(**{**config_to_hf(cfg), **kw})


def hf_meta_model(cfg: GPTConfig, **kw):
    """A GPT2LMHeadModel on the meta device: shapes and structure, no memory, no init."""
    import torch
    import transformers
    with torch.device("meta"):
        return transformers.GPT2LMHeadModel(hf_config(cfg, **kw))


def torch_params(model) -> int:
    return sum(p.numel() for p in model.parameters())   # parameters() lists a tied one once


# -- sections -----------------------------------------------------------------------------------

def params_section(cfg: GPTConfig = GPT2, hf: bool = True) -> dict:
    """Tied vs untied parameter counts, both counted from the models' parameter shapes
    (GPTConfig(tie_embeddings=False) adds an lm_head of vocab_size x n_embd)."""
    tied = count_params(cfg)
    untied = count_params(cfg.replace(tie_embeddings=False))
    n = count_params(cfg, non_embedding=True)
    out = {"ours_tied": tied, "ours_untied": untied, "head_params": untied - tied,
           "nanogpt_non_embedding": n,
           "nanogpt_padded_vocab_50304": count_params(cfg.replace(vocab_size=50304)),
           # what nanoGPT prints (get_num_params: no wpe) at its vocab 50304: GPTConfig's
           # default bias=True, and train.py's from-scratch default bias=False
           "nanogpt_printed_vocab_50304": count_params(cfg.replace(vocab_size=50304),
                                                       non_embedding=True),
           "nanogpt_printed_train_py": count_params(cfg.replace(vocab_size=50304, bias=False),
                                                    non_embedding=True),
           "flops_per_token_ours": flops_per_token(cfg, cfg.block_size, n),
           "flops_per_token_nanogpt": nanogpt_flops_per_token(cfg, n)}
    if hf:
        m, u = hf_meta_model(cfg), hf_meta_model(cfg, tie_word_embeddings=False)
        out.update(hf_tied=torch_params(m), hf_untied=torch_params(u),
                   hf_lm_head_is_wte=m.lm_head.weight is m.transformer.wte.weight)
    out["untied_saving"] = 1 - out["ours_tied"] / out["ours_untied"]
    return out


def nanogpt_flops_per_token(cfg: GPTConfig, n_params: int) -> int:
    """nanoGPT's estimate_mfu FLOPs per token, in its own terms: 6N + 12 L H Q T with
    N = get_num_params() (no wpe), Q the head size and T the block size (PaLM, appendix B)."""
    L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
    return 6 * n_params + 12 * L * H * Q * T


def layout_section(cfg: GPTConfig = GPT2, hf: bool = True, timed: bool = True,
                   repeats: int = 7) -> dict:
    """How many tensors an import of Hugging Face's weights must transpose: ours (flax Dense
    kernels are (in, out), like Conv1D) and nanoGPT's (nn.Linear is (out, in)); then the
    batch-1 product with each layout, timed."""
    ours = {name: shape for name, _, shape in tensor_table(cfg)}
    out = {}
    if hf:
        from transformers.pytorch_utils import Conv1D
        m = hf_meta_model(cfg)
        sd = {k.removeprefix("transformer."): tuple(v.shape) for k, v in m.state_dict().items()
              if k != "lm_head.weight"}
        conv = [n for n, mod in m.transformer.named_modules() if isinstance(mod, Conv1D)]
        out.update(hf_tensors=len(sd),
                   ours_same_shape=sum(ours.get(k) == s for k, s in sd.items()),
                   ours_transposed=sum(ours.get(k) == s[::-1] != s for k, s in sd.items()),
                   hf_conv1d_weights=len(conv),
                   nanogpt_transposed_on_import=len(conv))   # its from_pretrained .t()s each
    if timed:
        out["batch1_product"] = speed.layout_speed(cfg.n_embd, 4 * cfg.n_embd, repeats=repeats,
                                                   torch_peers=hf)
    return out


GROUPS = {  # group -> (path suffix test, theory std or None)
    "wte": (lambda p: p.startswith("wte"), 0.02),
    "wpe": (lambda p: p.startswith("wpe"), 0.02),
    "attn.c_attn.kernel": (lambda p: p.endswith("attn.c_attn.kernel"), 0.02),
    "attn.c_proj.kernel": (lambda p: p.endswith("attn.c_proj.kernel"), "residual"),
    "mlp.c_fc.kernel": (lambda p: p.endswith("mlp.c_fc.kernel"), 0.02),
    "mlp.c_proj.kernel": (lambda p: p.endswith("mlp.c_proj.kernel"), "residual"),
    "biases": (lambda p: p.endswith("bias"), 0.0),
    "ln.scale": (lambda p: p.endswith("scale"), 0.0),
}


def group_stats(named: dict[str, np.ndarray], n_layer: int) -> dict:
    """{group: {"std", "mean", "theory", "n"}} over every tensor of each group (float64)."""
    out = {}
    for g, (test, theory) in GROUPS.items():
        xs = [np.asarray(v, np.float64).ravel() for p, v in named.items() if test(p)]
        x = np.concatenate(xs)
        out[g] = {"std": float(x.std()), "mean": float(x.mean()), "n": int(x.size),
                  "theory": 0.02 / math.sqrt(2 * n_layer) if theory == "residual" else theory}
    return out


@functools.partial(jax.jit, static_argnums=1)
def _residual_stds(params, cfg: GPTConfig, tokens):
    is_block = lambda mdl, _: isinstance(mdl, Block)
    _, state = GPT(cfg).apply({"params": params}, tokens, capture_intermediates=is_block)
    inter = state["intermediates"]
    emb = params["wte"]["embedding"][tokens] + params["wpe"]["embedding"][:tokens.shape[1]]
    return jnp.stack([jnp.std(emb)] + [jnp.std(inter[f"h_{i}"]["__call__"][0][0])
                                       for i in range(cfg.n_layer)])


def residual_stream_std(params, cfg: GPTConfig, tokens) -> list[float]:
    """The std of the residual stream after the embeddings and after each block."""
    return [float(x) for x in _residual_stds(params, cfg, tokens)]


def init_section(cfg: GPTConfig = GPT2, hf: bool = True, seq: int = 64) -> dict:
    """Each weight group's std at init against GPT-2's rule (N(0, 0.02); the two residual
    projections N(0, 0.02/sqrt(2 n_layer)); zero biases, unit LayerNorm scales), ours and
    Hugging Face's _init_weights; then the residual stream's std block by block with the
    projections scaled (ours) and unscaled (all 0.02: the same draw times sqrt(2 n_layer))."""
    params = init_params(cfg, jax.random.key(0))
    named = {_path(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    named = {p: (x - 1.0 if p.endswith("scale") else x) for p, x in named.items()}  # 1 -> 0
    out = {"ours": group_stats(named, cfg.n_layer)}
    if hf:
        import torch
        import transformers
        torch.manual_seed(0)
        m = transformers.GPT2LMHeadModel(hf_config(cfg))
        hf_named = {}
        for name, p in m.transformer.named_parameters():
            name = name.replace("h.", "h_", 1).replace(".weight", ".kernel")
            if name.startswith(("wte", "wpe")):
                name = name.replace(".kernel", ".embedding")
            if ".ln_" in name or name.startswith("ln_f"):
                name = name.replace(".kernel", ".scale")
            x = p.detach().numpy()
            hf_named[name] = x - 1.0 if name.endswith("scale") else x
        out["hf"] = group_stats(hf_named, cfg.n_layer)
        del m
    tokens = jax.random.randint(jax.random.key(1), (2, seq), 0, cfg.n_real_vocab)
    unscaled = jax.tree_util.tree_map_with_path(
        lambda p, x: x * math.sqrt(2 * cfg.n_layer) if _path(p).endswith("c_proj.kernel")
        else x, params)
    scaled_std = residual_stream_std(params, cfg, tokens)
    unscaled_std = residual_stream_std(unscaled, cfg, tokens)
    out["residual_stream_std"] = {
        "scaled_c_proj": scaled_std, "unscaled_c_proj": unscaled_std,
        "growth_scaled": scaled_std[-1] / scaled_std[0],
        "growth_unscaled": unscaled_std[-1] / unscaled_std[0]}
    return out


def parity_section(cfg: GPTConfig = GPT2, batch: int = 2, seq: int = 64) -> dict:
    """Logits and loss against transformers' GPT2LMHeadModel on the same (randomised)
    weights; and the three ways of shifting the loss: ours (the model reads tokens[:, :-1],
    targets tokens[:, 1:]), Hugging Face's (labels = input_ids, shifted inside the loss,
    the last position's logits computed and dropped) and nanoGPT's (get_batch's x and y)."""
    import torch
    params = randomised(init_params(cfg, jax.random.key(0)), jax.random.key(1))
    tokens = np.asarray(jax.random.randint(jax.random.key(2), (batch, seq + 1), 0,
                                           cfg.n_real_vocab))
    model = to_transformers(params, cfg)
    x = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        hf_out = model(input_ids=x, labels=x)                       # (B, T + 1) in, T losses
        hf_logits = hf_out.logits.numpy()
        nano = torch.nn.functional.cross_entropy(                  # x = t[:-1], y = t[1:]
            model(input_ids=x[:, :-1]).logits.reshape(-1, hf_logits.shape[-1]),
            x[:, 1:].reshape(-1))
    ours_logits = np.asarray(jax.jit(GPT(cfg).apply)({"params": params}, jnp.asarray(tokens)))
    ours_loss = float(jax.jit(loss_fn, static_argnums=1)(params, cfg, jnp.asarray(tokens)))
    unfused = float(cross_entropy(ours_logits[:, :-1], tokens[:, 1:]))
    diff = np.abs(ours_logits - hf_logits[..., :ours_logits.shape[-1]])
    return {"batch": batch, "seq": seq + 1,
            "logits_max_abs_diff": float(diff.max()),
            "logits_std": float(hf_logits.std()),
            "loss_ours": ours_loss, "loss_ours_unfused": unfused,
            "loss_hf_labels": float(hf_out.loss), "loss_nanogpt_xy": float(nano),
            "loss_max_rel_diff": max(abs(v - ours_loss) / ours_loss
                                     for v in (unfused, float(hf_out.loss), float(nano))),
            "hf_head_rows_computed_per_target": (seq + 1) / seq}


def untied_loss(params, head, cfg: GPTConfig, tokens):
    """loss_fn with a separate head (V, C): the final LayerNorm's output captured from GPT and
    multiplied by `head` instead of wte (GPT's own tied logits are computed and unused)."""
    is_ln_f = lambda mdl, _: mdl.name == "ln_f"
    _, state = GPT(cfg).apply({"params": params}, tokens[:, :-1], capture_intermediates=is_ln_f)
    x = state["intermediates"]["ln_f"]["__call__"][0]                    # (B, T, C)
    logits = mask_padded_vocab(jnp.einsum("btc,vc->btv", x, head), cfg)
    return cross_entropy(logits, tokens[:, 1:])


def tying_section(cfg: GPTConfig, batch: int = 4, seq: int = 64) -> dict:
    """Weight tying's mechanics: HF and nanoGPT make lm_head.weight and wte.weight one
    tensor, ours reads wte in the head; either way autodiff sums the two uses. Measured: the
    tied gradient of wte equals the untied model's embedding gradient plus its head gradient
    (head = wte), and how the two parts differ (the head's touches every row, the
    embedding's only the rows of tokens in the batch)."""
    params = randomised(init_params(cfg, jax.random.key(0)), jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (batch, seq + 1), 0, cfg.n_real_vocab)
    g_tied = jax.jit(jax.grad(loss_fn), static_argnums=1)(params, cfg, tokens)
    g_tied = g_tied["wte"]["embedding"]
    g_params, g_head = jax.jit(jax.grad(untied_loss, argnums=(0, 1)), static_argnums=2)(
        params, params["wte"]["embedding"], cfg, tokens)
    g_emb = g_params["wte"]["embedding"]
    rows = lambda g: int(jnp.sum(jnp.any(g != 0, axis=1)))
    norm = lambda g: float(jnp.linalg.norm(g))
    return {"max_abs_diff_tied_vs_sum": float(jnp.max(jnp.abs(g_tied - (g_emb + g_head)))),
            "tied_grad_norm": norm(g_tied), "embedding_grad_norm": norm(g_emb),
            "head_grad_norm": norm(g_head), "vocab_rows": int(g_tied.shape[0]),
            "rows_touched_by_embedding": rows(g_emb), "rows_touched_by_head": rows(g_head),
            "distinct_input_tokens": int(np.unique(np.asarray(tokens[:, :-1])).size)}


def masking_section(shape=(1, 16, 4, 32)) -> dict:
    """jax.nn.dot_product_attention(is_causal=True) aligns the mask top-left: a decode step's
    one query at the end of an S-key cache sees key 0 only, not all S. Measured against the
    explicit mask decoding needs (Hugging Face's SDPA path sets is_causal=False when
    q_length == 1, masking_utils._ignore_causal_mask_sdpa)."""
    B, S, H, D = shape
    q1, k, v = (jax.random.normal(kk, s) for kk, s in zip(
        jax.random.split(jax.random.key(0), 3), [(B, 1, H, D), shape, shape]))
    wrong = jax.nn.dot_product_attention(q1, k, v, is_causal=True)
    right = jax.nn.dot_product_attention(q1, k, v, mask=jnp.ones((B, 1, 1, S), bool))
    return {"keys": S, "is_causal_max_abs_error": float(jnp.max(jnp.abs(wrong - right))),
            "is_causal_equals_first_value": bool(jnp.allclose(wrong, v[:, :1], atol=1e-6)),
            "value_std": float(jnp.std(v))}


def dropout_section(cfg: GPTConfig, hf: bool = True, timed: bool = True,
                    repeats: int = 3) -> dict:
    """Where dropout acts in a training forward: our nn.Dropout calls with a rate and
    deterministic off, counted by intercepting them; Hugging Face's nn.Dropout modules with
    p > 0 (embd_pdrop, attn_pdrop, two resid_pdrop per block). Then its cost, timed."""
    c = cfg.replace(dropout=0.1)
    params = param_shapes(c)
    sites = []

    def count(next_fun, args, kwargs, context):
        mod = context.module
        if isinstance(mod, nn.Dropout) and context.method_name == "__call__":
            det = kwargs.get("deterministic", mod.deterministic)
            if mod.rate > 0 and det is False:
                sites.append(mod.name)
        return next_fun(*args, **kwargs)
    tokens = jnp.zeros((1, 8), jnp.int32)
    with nn.intercept_methods(count):         # counted while tracing: nothing is compiled
        jax.eval_shape(lambda p: GPT(c).apply({"params": p}, tokens, deterministic=False,
                                              rngs={"dropout": jax.random.key(1)}), params)
    out = {"ours_sites": len(sites), "expected_1_plus_3L": 1 + 3 * cfg.n_layer}
    if hf:
        import torch
        m = hf_meta_model(cfg, embd_pdrop=0.1, attn_pdrop=0.1, resid_pdrop=0.1)
        out["hf_dropout_modules"] = sum(isinstance(mod, torch.nn.Dropout) and mod.p > 0
                                        for mod in m.modules())
    if timed:
        out["cost"] = speed.dropout_speed(cfg, repeats=repeats)
    return out


def decay_section(cfg: GPTConfig = GPT2, hf: bool = True) -> dict:
    """Weight decay's parameter groups: ours (optimizer.decay_mask: Dense kernels and
    embeddings, by leaf name), nanoGPT's (every tensor with ndim >= 2) and the HF Trainer's
    (not in a LayerNorm, no "bias" in the name), as tensors and parameters; and what the
    ndim rule would decay in our scanned layout (stacked layers add an axis to every leaf)."""
    shapes = param_shapes(cfg)
    leaves = jax.tree_util.tree_leaves(shapes)
    mask = jax.tree_util.tree_leaves(decay_mask(shapes))
    size = lambda x: math.prod(x.shape)
    ours = {"tensors": sum(mask), "params": sum(size(x) for x, m in zip(leaves, mask) if m)}
    nano = [len(x.shape) >= 2 for x in leaves]
    stacked = stack_layers(jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.int8),
                                                  shapes), cfg.n_layer)
    st_leaves = jax.tree_util.tree_leaves(stacked)
    st_mask = jax.tree_util.tree_leaves(decay_mask(stacked))
    wrong = [(x, m) for x, m in zip(st_leaves, st_mask) if (x.ndim >= 2) != m]
    out = {"total_params": sum(size(x) for x in leaves), "ours_decayed": ours,
           "nanogpt_ndim_rule_disagreements": sum(a != b for a, b in zip(nano, mask)),
           "stacked_ours_decayed_params": sum(x.size for x, m in zip(st_leaves, st_mask) if m),
           "stacked_ndim_rule_wrong_tensors": len(wrong),
           "stacked_ndim_rule_wrong_params": sum(x.size for x, _ in wrong)}
    if hf:
        import transformers
        m = hf_meta_model(cfg)
        names = set(transformers.Trainer.get_decay_parameter_names(None, m))
        named = dict(m.named_parameters())                  # the tied lm_head listed once
        out["hf_trainer_decayed"] = {"tensors": len(names & set(named)),
                                     "params": sum(named[n].numel() for n in names
                                                   if n in named)}
    return out


def attention_section(shape=(4, 256, 4, 64), hf: bool = True, repeats: int = 5) -> dict:
    return speed.attention_speed(shape, repeats=repeats, torch_peers=hf)


def cache_section(cfg: GPTConfig = speed.SPEED_CFG, hf: bool = True, repeats: int = 3,
                  new_tokens: int = 64) -> dict:
    params = init_params(cfg, jax.random.key(0))
    return speed.cache_speed(params, cfg, new_tokens=new_tokens, repeats=repeats, hf=hf)


SMALL = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=256)
SECTIONS: dict[str, Callable[..., dict]] = {
    "params": lambda hf: params_section(GPT2, hf),
    "layout": lambda hf: layout_section(GPT2, hf),
    "init": lambda hf: init_section(GPT2, hf),
    "parity": lambda hf: parity_section(GPT2) if hf else {"skipped": "needs transformers"},
    "tying": lambda hf: tying_section(SMALL),
    "masking": lambda hf: masking_section(),
    "hf": lambda hf: hf_behaviour_section() if hf else {"skipped": "needs transformers"},
    "dropout": lambda hf: dropout_section(SMALL, hf),
    "decay": lambda hf: decay_section(GPT2, hf),
    "attention": lambda hf: attention_section(hf=hf),
    "cache": lambda hf: cache_section(hf=hf),
}


def machine() -> dict:
    import os
    return {"platform": platform.platform(), "cpus": os.cpu_count(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "backend": jax.default_backend(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
