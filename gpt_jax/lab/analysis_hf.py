"""What Hugging Face's GPT-2 does at run time, observed in the installed transformers on a tiny
model (docs/analysis.md, sections 1-3 and 5): which attention implementation a model gets, which
mask each path builds (none at all on SDPA's common paths), what a StaticCache's decode step
is masked with, that a decode step through the skipped mask equals the full forward, the order
generate() applies its logits processors in, and what `logits_to_keep`, the deprecated
`past_key_values` and `num_items_in_batch` do. Each is a fact the doc states from the source;
here it is observed, so a transformers upgrade that changes one shows up in the tests. Also:
GPT2ForSequenceClassification's pooling of the last non-pad token, and why (section 12).
"""
from __future__ import annotations

import warnings

from gpt_jax.checkpoint.hf import config_to_hf
from gpt_jax.model.config import GPTConfig

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=128)


def _mask(config, impl: str, q_len: int, cache=None, attention_mask=None):
    """create_causal_mask as GPT2Model.forward calls it, for a q_len-token input on `impl`."""
    import torch
    from transformers.masking_utils import create_causal_mask
    c = config.__class__(**config.to_dict())
    c._attn_implementation = impl
    batch = 1 if attention_mask is None else attention_mask.shape[0]
    past = cache.get_seq_length() if cache is not None else 0
    return create_causal_mask(config=c, inputs_embeds=torch.zeros(batch, q_len, c.n_embd),
                              attention_mask=attention_mask, cache=cache,
                              position_ids=torch.arange(q_len)[None] + past)


def _describe(mask) -> dict:
    """A mask as JSON: None (no mask: SDPA's is_causal decides), or its dtype, shape, smallest
    value and how many (query, key) pairs it leaves open (True, or 0 in an additive mask)."""
    if mask is None:
        return {"mask": None}
    is_bool = not mask.dtype.is_floating_point
    return {"mask": str(mask.dtype).removeprefix("torch."), "shape": list(mask.shape),
            "min": float(mask.float().min()),
            "open": int(mask.sum()) if is_bool else int((mask == 0).sum())}


def _pooling(transformers, config, cfg: GPTConfig, length: int) -> dict:
    """GPT2ForSequenceClassification on a right-padded row: which position its logits are
    (score of the last non-pad token's hidden state), and why not the first: under the causal
    mask position 0's hidden state is the same whatever follows it."""
    import torch
    pad = cfg.n_real_vocab - 1
    seq = transformers.GPT2ForSequenceClassification(
        transformers.GPT2Config(**{**config.to_dict(), "pad_token_id": pad, "num_labels": 2}))
    seq.eval()
    ids = torch.randint(0, pad, (1, length + 2))
    ids[0, -2:] = pad                                      # two pads on the right
    mask = (ids != pad).long()
    hidden = seq.transformer(ids, attention_mask=mask).last_hidden_state[0]     # (T, C)
    changed = ids.clone()
    changed[0, 1:length] = (changed[0, 1:length] + 1) % pad   # every real token but the first
    first_after = seq.transformer(changed, attention_mask=mask).last_hidden_state[0, 0]
    logits = seq(ids, attention_mask=mask).logits[0]
    return {"seqcls_logits_vs_score_of_last_non_pad_max_abs":
            float((logits - seq.score(hidden[length - 1])).abs().max()),
            "seqcls_logits_vs_score_of_first_max_abs":
            float((logits - seq.score(hidden[0])).abs().max()),
            "first_position_hidden_change_when_later_tokens_change":
            float((first_after - hidden[0]).abs().max())}


def hf_behaviour_section(cfg: GPTConfig = TINY, prompt_len: int = 5) -> dict:
    """Observed on a GPT2LMHeadModel of `cfg` (random weights, eval mode, float32).

    Args:
      cfg: the model's size (tiny: every call here is a forward of a few tokens).
      prompt_len: the prefill's length P; the decode step is position P.

    Returns:
      A JSON-able dict: default_attn_implementation; masks {case: {mask dtype or None, shape,
      min, open}}; decode_step_vs_full_forward_max_abs; flex_attention_refused;
      past_key_values_warns; logits_to_keep_1_rows; sampling_processors (class names, in
      order); num_items_in_batch_loss_over_mean; the sequence classifier's pooling
      (seqcls_*, first_position_hidden_change_when_later_tokens_change).
    """
    import torch
    import transformers
    from transformers import DynamicCache, StaticCache
    torch.manual_seed(0)
    config = transformers.GPT2Config(**config_to_hf(cfg))
    model = transformers.GPT2LMHeadModel(config).eval()
    x = torch.randint(0, cfg.n_real_vocab, (1, prompt_len + 1))
    prompt, nxt = x[:, :prompt_len], x[:, prompt_len:]
    out = {"transformers": transformers.__version__,
           "default_attn_implementation": model.config._attn_implementation}
    with torch.no_grad():
        dyn = model(prompt, use_cache=True).cache                    # P positions cached
        static = StaticCache(config=config, max_cache_len=2 * prompt_len + 6)
        model(prompt, cache=static, use_cache=True)
        padded = torch.ones(1, prompt_len + 1, dtype=torch.long)
        padded[0, 0] = 0                                              # one left pad
        out["masks"] = {
            "sdpa_prefill": _describe(_mask(config, "sdpa", prompt_len)),
            "sdpa_decode": _describe(_mask(config, "sdpa", 1, dyn)),
            "sdpa_decode_with_padding": _describe(_mask(config, "sdpa", 1, dyn, padded)),
            "sdpa_decode_static_cache": _describe(_mask(config, "sdpa", 1, static)),
            "eager_prefill": _describe(_mask(config, "eager", prompt_len)),
            "eager_decode": _describe(_mask(config, "eager", 1, dyn))}
        step = model(nxt, cache=dyn, use_cache=True).logits[0, -1]   # through the skipped mask
        full = model(x).logits[0, -1]
        out["decode_step_vs_full_forward_max_abs"] = float((step - full).abs().max())
        out["float32_min"] = float(torch.finfo(torch.float32).min)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(nxt, past_key_values=DynamicCache(config=config))
        out["past_key_values_warns"] = any("Use `cache` instead" in str(w.message)
                                           for w in caught)
        out["logits_to_keep_1_rows"] = int(model(x, logits_to_keep=1).logits.shape[1])
        mean = float(model(x, labels=x).loss)                         # prompt_len targets
        summed = float(model(x, labels=x, num_items_in_batch=torch.tensor(2 * prompt_len)).loss)
        out["num_items_in_batch_loss_over_mean"] = summed / mean
        out.update(_pooling(transformers, config, cfg, prompt_len))
    try:
        transformers.GPT2LMHeadModel._from_config(config, attn_implementation="flex_attention")
        out["flex_attention_refused"] = False
    except ValueError:
        out["flex_attention_refused"] = True
    gen = transformers.GenerationConfig(do_sample=True, temperature=0.7, top_k=10, top_p=0.9,
                                        min_p=0.05, repetition_penalty=1.2)
    procs = model._get_logits_processor(generation_config=gen, input_ids_seq_length=prompt_len,
                                        device="cpu")
    out["sampling_processors"] = [type(p).__name__ for p in procs]
    out["prompt_len"] = prompt_len
    return out
