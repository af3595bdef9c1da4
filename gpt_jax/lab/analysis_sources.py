"""The source lines docs/analysis.md cites, with what each line must say: transformers 5.24.0
(checked against the installed copy by tests/lab/test_analysis_citations.py) and nanoGPT at
named commits (no checkout offline: checked only where NANOGPT_DIR points at one).

A citation in the doc is `file.py:LINE` (or `file.py:LINE-LINE`); every one must be a row
here, and every row's line must still hold its text. When transformers is upgraded the test
names each line that moved or changed, so the doc is re-read, not silently stale.
"""
from __future__ import annotations

import os
import re
from typing import Optional

TRANSFORMERS_VERSION = "5.24.0"   # .ci/constraints.txt pins it; the doc cites its lines

# The doc's short file names -> the path inside the transformers package.
TRANSFORMERS_FILES = {
    "modeling_gpt2.py": "models/gpt2/modeling_gpt2.py",
    "configuration_gpt2.py": "models/gpt2/configuration_gpt2.py",
    "modeling_bert.py": "models/bert/modeling_bert.py",
    "masking_utils.py": "masking_utils.py",
    "sdpa_attention.py": "integrations/sdpa_attention.py",
    "modeling_utils.py": "modeling_utils.py",
    "modeling_layers.py": "modeling_layers.py",
    "cache_utils.py": "cache_utils.py",
    "pytorch_utils.py": "pytorch_utils.py",
    "generation/utils.py": "generation/utils.py",
    "generation/configuration_utils.py": "generation/configuration_utils.py",
    "loss_utils.py": "loss/loss_utils.py",
    "trainer.py": "trainer.py",
}

# (short file, line) -> text the line holds (a substring, whitespace as in the source).
TRANSFORMERS: dict[tuple[str, int], str] = {
    ("modeling_gpt2.py", 55): "def eager_attention_forward(",
    ("modeling_gpt2.py", 59): "torch.matmul(query, key.transpose(-1, -2)) * scaling",
    ("modeling_gpt2.py", 62): "attn_weights = attn_weights + attention_mask",
    ("modeling_gpt2.py", 98): "if self.scale_attn_weights:",
    ("modeling_gpt2.py", 99): "self.scaling = self.head_dim**-0.5",
    ("modeling_gpt2.py", 100): "if self.scale_attn_by_inverse_layer_idx:",
    ("modeling_gpt2.py", 101): "self.scaling /= float(self.layer_idx + 1)",
    ("modeling_gpt2.py", 110): "self.attn_dropout = nn.Dropout(config.attn_pdrop)",
    ("modeling_gpt2.py", 111): "self.resid_dropout = nn.Dropout(config.resid_pdrop)",
    ("modeling_gpt2.py", 120): "dtype=torch.float32",
    ("modeling_gpt2.py", 125): "torch.baddbmm(attn_weights, q.float(), k.float(), beta=0, "
                               "alpha=self.scaling)",
    ("modeling_gpt2.py", 145): '@deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")',
    ("modeling_gpt2.py", 198): "curr_cache.update(key_states, value_states, self.layer_idx",
    ("modeling_gpt2.py", 203): 'using_eager = self.config._attn_implementation == "eager"',
    ("modeling_gpt2.py", 204): "ALL_ATTENTION_FUNCTIONS.get_interface(",
    ("modeling_gpt2.py", 208): "if using_eager and self.reorder_and_upcast_attn:",
    ("modeling_gpt2.py", 238): "self.dropout = nn.Dropout(config.resid_pdrop)",
    ("modeling_gpt2.py", 248): "class GPT2Block(GradientCheckpointingLayer):",
    ("modeling_gpt2.py", 417): "supports_gradient_checkpointing = True",
    ("modeling_gpt2.py", 419): "_supports_flash_attn = True",
    ("modeling_gpt2.py", 420): "_supports_sdpa = True",
    ("modeling_gpt2.py", 422): "_can_compile_fullgraph = True",
    ("modeling_gpt2.py", 430): '_keys_to_ignore_on_load_unexpected = ["attn.bias", '
                               '"crossattention.bias"]',
    ("modeling_gpt2.py", 434): "super()._init_weights(module)",
    ("modeling_gpt2.py", 436): "init.normal_(module.weight, mean=0.0, "
                               "std=self.config.initializer_range)",
    ("modeling_gpt2.py", 448): "std = self.config.initializer_range / "
                               "math.sqrt(2 * self.config.n_layer)",
    ("modeling_gpt2.py", 494): "self.drop = nn.Dropout(config.embd_pdrop)",
    ("modeling_gpt2.py", 563): "cache = DynamicCache(config=self.config)",
    ("modeling_gpt2.py", 583): "causal_mask = create_causal_mask(",
    ("modeling_gpt2.py", 610): "cache if not (self.gradient_checkpointing and self.training) "
                               "else None",
    ("modeling_gpt2.py", 637): '_tied_weights_keys = {"lm_head.weight": '
                               '"transformer.wte.weight"}',
    ("modeling_gpt2.py", 642): "self.lm_head = nn.Linear(config.n_embd, config.vocab_size, "
                               "bias=False)",
    ("modeling_gpt2.py", 662): "logits_to_keep: int | torch.Tensor = 0",
    ("modeling_gpt2.py", 697): "hidden_states = slice_logits_to_keep(hidden_states, "
                               "logits_to_keep)",
    ("modeling_gpt2.py", 703): "loss = self.loss_function(",
    ("modeling_gpt2.py", 865): "self.score = nn.Linear(config.n_embd, self.num_labels, "
                               "bias=False)",
    ("modeling_gpt2.py", 917): "if self.config.pad_token_id is None and batch_size != 1:",
    ("modeling_gpt2.py", 922): "we take the rightmost token that is not equal to pad_token_id",
    ("modeling_gpt2.py", 925): "last_non_pad_token = (token_indices * non_pad_mask).argmax(-1)",
    ("modeling_gpt2.py", 933): "pooled_logits = logits[torch.arange(batch_size, "
                               "device=logits.device), last_non_pad_token]",
    ("configuration_gpt2.py", 83): 'activation_function: str = "gelu_new"',
    ("configuration_gpt2.py", 94): "scale_attn_weights: bool = True",
    ("configuration_gpt2.py", 99): "scale_attn_by_inverse_layer_idx: bool = False",
    ("configuration_gpt2.py", 100): "reorder_and_upcast_attn: bool = False",
    ("configuration_gpt2.py", 102): "tie_word_embeddings: bool = True",
    ("modeling_bert.py", 464): "first_token_tensor = hidden_states[:, 0]",
    ("masking_utils.py", 252): "def _ignore_causal_mask_sdpa(",
    ("masking_utils.py", 280): "if is_torchdynamo_exporting() or (padding_mask is not None "
                               "and is_tracing(padding_mask)):",
    ("masking_utils.py", 283): "if isinstance(q_offset, torch.Tensor) and is_tracing(q_offset):",
    ("masking_utils.py", 292): "if (q_length == 1 or kv_length == q_length) and "
                               "(padding_mask is None or fast_all(padding_mask)):",
    ("masking_utils.py", 297): "if q_offset == 0 and (",
    ("masking_utils.py", 517): "if allow_is_causal_skip and _ignore_causal_mask_sdpa(",
    ("masking_utils.py", 526): "mask_function = and_masks(mask_function, "
                               "padding_mask_function(padding_mask))",
    ("masking_utils.py", 530): "q_arange = torch.arange(q_length, device=device) + q_offset",
    ("masking_utils.py", 607): "allow_is_causal_skip=False,",
    ("masking_utils.py", 615): "min_dtype = torch.finfo(dtype).min",
    ("masking_utils.py", 617): "mask = torch.where(mask, torch.zeros((), device=mask.device, "
                               "dtype=dtype), min_dtype)",
    ("masking_utils.py", 658): "if attention_mask.shape[1] == kv_length and "
                               "attention_mask.all():",
    ("masking_utils.py", 706): "block_mask = create_block_mask(",
    ("masking_utils.py", 722): '"sdpa": sdpa_mask,',
    ("masking_utils.py", 723): '"eager": eager_mask,',
    ("masking_utils.py", 727): '"flex_attention": flex_attention_mask,',
    ("masking_utils.py", 840): "q_offset = cache.get_query_offset(layer_idx)",
    ("masking_utils.py", 844): "kv_length, kv_offset = cache.get_mask_sizes(q_length, layer_idx)",
    ("masking_utils.py", 976): 'allow_is_causal_skip = allow_is_causal_skip and not '
                               '(getattr(cache, "is_compileable", False) and q_length == 1)',
    ("sdpa_attention.py", 148): "is_causal = q_length > 1 and attention_mask is None and "
                                "is_causal",
    ("sdpa_attention.py", 169): "if is_causal and attention_mask is None and q_length > 1 and "
                                "kv_length > q_length:",
    ("sdpa_attention.py", 182): "attn_output = torch.nn.functional.scaled_dot_product_attention(",
    ("modeling_utils.py", 1127): "_supports_flex_attn: bool = False",
    ("modeling_utils.py", 1696): "if not self._supports_flex_attn:",
    ("modeling_utils.py", 1856): 'applicable_attention = "sdpa" if requested_attention is None '
                                 'else requested_attention',
    ("modeling_utils.py", 1883): "Sdpa is the default, so we try it and fallback to eager",
    ("modeling_utils.py", 2320): "if isinstance(module, (nn.Linear, nn.Conv1d,",
    ("modeling_utils.py", 2332): "init.normal_(module.weight, mean=0.0, std=std)",
    ("modeling_utils.py", 2343): 'or "LayerNorm" in module.__class__.__name__',
    ("modeling_utils.py", 2348): "init.ones_(module.weight)",
    ("modeling_utils.py", 2350): "init.zeros_(module.bias)",
    ("modeling_utils.py", 2493): "if not tie_word_embeddings:",
    ("modeling_utils.py", 2539): "def tie_weights(self, missing_keys",
    ("modeling_utils.py", 2577): "if not _tied_params_are_equal(source_param, target_param):",
    ("modeling_utils.py", 2624): "setattr(parent, name, source_param)",
    ("modeling_utils.py", 3158): 'activation_checkpointing_kwargs = {"use_reentrant": False}',
    ("modeling_utils.py", 3205): "`gradient_checkpointing_enable` is deprecated",
    ("modeling_utils.py", 4835): "self._compiled_call = torch.compile(self.__call__, "
                                 "**compile_config.to_dict())",
    ("modeling_utils.py", 5098): "def slice_logits_to_keep(",
    ("modeling_utils.py", 5255): '"flash_attention_2": flash_attention_forward,',
    ("modeling_utils.py", 5256): '"flex_attention": flex_attention_forward,',
    ("modeling_utils.py", 5257): '"sdpa": sdpa_attention_forward,',
    ("modeling_layers.py", 96): "if self.gradient_checkpointing and self.training and "
                                "torch.is_grad_enabled() and is_outermost:",
    ("modeling_layers.py", 102): 'kwargs["use_cache"] = False',
    ("modeling_layers.py", 123): "return self._gradient_checkpointing_func(partial(forward, "
                                 "self, **kwargs), *args)",
    ("cache_utils.py", 136): "self.keys = torch.cat([self.keys, key_states], dim=-2)",
    ("cache_utils.py", 143): "kv_length = self.get_seq_length() + query_length",
    ("cache_utils.py", 413): "is_compileable = True",
    ("cache_utils.py", 439): "self.keys = torch.zeros(",
    ("cache_utils.py", 456): "torch._dynamo.mark_static_address(self.keys)",
    ("cache_utils.py", 481): "cache_position = torch.arange(kv_length, device=self.device) + "
                             "self.cumulative_length",
    ("cache_utils.py", 487): "self.keys.index_copy_(2, cache_position, key_states)",
    ("cache_utils.py", 499): "kv_length = self.max_cache_len",
    ("cache_utils.py", 2009): "class DynamicCache(Cache):",
    ("cache_utils.py", 2105): "class StaticCache(Cache):",
    ("pytorch_utils.py", 95): "class Conv1D(nn.Module):",
    ("pytorch_utils.py", 110): "self.weight = nn.Parameter(torch.empty(nx, nf))",
    ("pytorch_utils.py", 119): "x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)",
    ("generation/utils.py", 1416): "def _get_logits_processor(",
    ("generation/utils.py", 1472): "if generation_config.repetition_penalty is not None",
    ("generation/utils.py", 1603): "if generation_config.do_sample:",
    ("generation/utils.py", 1618): "if generation_config.temperature is not None and "
                                   "generation_config.temperature != 1.0:",
    ("generation/utils.py", 1622): "if generation_config.top_k is not None and "
                                   "generation_config.top_k != 0:",
    ("generation/utils.py", 1626): "if generation_config.top_p is not None and "
                                   "generation_config.top_p < 1.0:",
    ("generation/utils.py", 1630): "if generation_config.min_p is not None:",
    ("generation/utils.py", 1665): "def _get_stopping_criteria(",
    ("generation/utils.py", 1675): "MaxLengthCriteria(",
    ("generation/utils.py", 1681): "criteria.append(MaxTimeCriteria(max_time="
                                   "generation_config.max_time))",
    ("generation/utils.py", 1689): "StopStringCriteria(stop_strings=generation_config.stop_strings",
    ("generation/utils.py", 1691): "criteria.append(EosTokenCriteria(eos_token_id="
                                   "generation_config._eos_token_tensor))",
    ("generation/utils.py", 2289): "if generation_config.cache_implementation in "
                                   "ALL_STATIC_CACHE_IMPLEMENTATIONS:",
    ("generation/utils.py", 2450): 'valid_hardware = self.device.type in ["cuda", "xpu", '
                                   '"neuron", "tpu"]',
    ("generation/utils.py", 2458): "using_compilable_cache = cache is not None and "
                                   "cache.is_compileable and type(decoder_cache) is not "
                                   "DynamicCache",
    ("generation/utils.py", 2956): 'model_kwargs["logits_to_keep"] = 1',
    ("generation/utils.py", 3123): "def _sample(",
    ("generation/utils.py", 3202): "self.get_compiled_call(generation_config.compile_config)",
    ("generation/utils.py", 3230): "while self._has_unfinished_sequences(",
    ("generation/utils.py", 3248): "next_token_logits = outputs.logits[:, -1].to(copy=True, "
                                   "dtype=torch.float32",
    ("generation/utils.py", 3251): "next_token_scores = logits_processor(input_ids, "
                                   "next_token_logits)",
    ("generation/utils.py", 3277): "next_tokens = torch.multinomial(probs, num_samples=1)",
    ("generation/utils.py", 3279): "next_tokens = torch.argmax(next_token_scores, dim=-1)",
    ("generation/utils.py", 3286): "input_ids = torch.cat([input_ids, next_tokens[:, None]], "
                                   "dim=-1)",
    ("generation/utils.py", 3288): "unfinished_sequences = unfinished_sequences & "
                                   "~stopping_criteria(input_ids, scores)",
    ("generation/configuration_utils.py", 47): 'STATIC_CACHE_IMPLEMENTATIONS = ("static", '
                                               '"offloaded_static")',
    ("generation/configuration_utils.py", 412): 'self.temperature = kwargs.pop("temperature", '
                                                'None)',
    ("generation/configuration_utils.py", 602): "def _get_default_generation_params()",
    ("generation/configuration_utils.py", 611): '"max_length": 20,',
    ("generation/configuration_utils.py", 613): '"do_sample": False,',
    ("generation/configuration_utils.py", 617): '"temperature": 1.0,',
    ("generation/configuration_utils.py", 618): '"top_k": 50,',
    ("generation/configuration_utils.py", 619): '"top_p": 1.0,',
    ("loss_utils.py", 41): 'reduction = "sum" if num_items_in_batch is not None else "mean"',
    ("loss_utils.py", 47): "loss = loss / num_items_in_batch",
    ("loss_utils.py", 61): "logits = logits.float()",
    ("loss_utils.py", 65): "labels = nn.functional.pad(labels, (0, 1), value=ignore_index)",
    ("loss_utils.py", 66): "shift_labels = labels[..., 1:].contiguous()",
    ("trainer.py", 1416): 'forbidden_name_patterns = [r"bias", r"layernorm"',
    ("trainer.py", 1417): "get_parameter_names(model, [nn.LayerNorm], forbidden_name_patterns)",
    ("trainer.py", 1879): "self.args.gradient_accumulation_steps if update_step",
    ("trainer.py", 2297): "for _ in range(num_batches):",
    ("trainer.py", 2170): 'kwargs["num_items_in_batch"] = num_items_in_batch',
    ("trainer.py", 2338): 'else batch["labels"][..., 1:]',
    ("trainer.py", 2343): "num_items_in_batch = sum(labels.ne(-100).sum() for labels in "
                          "labels_for_count)",
}

# nanoGPT: the copies stored under karpathy/nanoGPT in the code index the doc was written from,
# one commit per file (the index holds the fork network's commits: these three are the
# closest to upstream master it holds; docs/analysis.md says where they differ).
NANOGPT_COMMITS = {
    "model.py": "04a1d697ddc57aadb2edbe95816bf86c6b8918b0",
    "train.py": "e2221318e607eb5ee0669d6b7641af25a2111545",
    "sample.py": "0031515856466fcdab1486103d8863a1cc04cd8c",
}

NANOGPT: dict[tuple[str, int], str] = {
    ("model.py", 23): "self.weight = nn.Parameter(torch.ones(ndim))",
    ("model.py", 24): "self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None",
    ("model.py", 39): "self.attn_dropout = nn.Dropout(config.dropout)",
    ("model.py", 40): "self.resid_dropout = nn.Dropout(config.dropout)",
    ("model.py", 54): 'self.register_buffer("bias"',
    ("model.py", 57): "def apply_svd_to_v(self, v):",
    ("model.py", 117): "is_causal=True",
    ("model.py", 120): "(1.0 / math.sqrt(k.size(-1)))",
    ("model.py", 121): "masked_fill(self.bias[:,:,:T,:T] == 0, float('-inf'))",
    ("model.py", 138): "self.dropout = nn.Dropout(config.dropout)",
    ("model.py", 164): "vocab_size: int = 50304",
    ("model.py", 169): "bias: bool = True",
    ("model.py", 186): "drop = nn.Dropout(config.dropout),",
    ("model.py", 195): "self.transformer.wte.weight = self.lm_head.weight",
    ("model.py", 202): "std=0.02/math.sqrt(2 * config.n_layer)",
    ("model.py", 205): 'print("number of parameters: %.2fM"',
    ("model.py", 216): "n_params -= self.transformer.wpe.weight.numel()",
    ("model.py", 219): "def _init_weights(self, module):",
    ("model.py", 244): "ignore_index=-1",
    ("model.py", 247): "logits = self.lm_head(x[:, [-1], :])",
    ("model.py", 252): "def crop_block_size(self, block_size):",
    ("model.py", 258): "wpe.weight[:block_size]",
    ("model.py", 280): "config_args['vocab_size'] = 50257",
    ("model.py", 292): "sd_keys = [k for k in sd_keys if not k.endswith('.attn.bias')]",
    ("model.py", 300): "'.attn.masked_bias'",
    ("model.py", 301): "not k.endswith('.attn.bias')",
    ("model.py", 302): "transposed = ['attn.c_attn.weight', 'attn.c_proj.weight', "
                       "'mlp.c_fc.weight', 'mlp.c_proj.weight']",
    ("model.py", 305): "assert len(sd_keys_hf) == len(sd_keys)",
    ("model.py", 311): "sd[k].copy_(sd_hf[k].t())",
    ("model.py", 327): "decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]",
    ("model.py", 339): "use_fused = fused_available and device_type == 'cuda'",
    ("model.py", 341): "torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, "
                       "**extra_args)",
    ("model.py", 346): "def estimate_mfu(self, fwdbwd_per_iter, dt):",
    ("model.py", 353): "flops_per_token = 6*N + 12*L*H*Q*T",
    ("model.py", 358): "flops_promised = 312e12",
    ("model.py", 363): "def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):",
    ("model.py", 371): "idx_cond = idx if idx.size(1) <= self.config.block_size else "
                       "idx[:, -self.config.block_size:]",
    ("model.py", 375): "logits = logits[:, -1, :] / temperature",
    ("model.py", 378): "torch.topk(logits, min(top_k, logits.size(-1)))",
    ("model.py", 383): "idx_next = torch.multinomial(probs, num_samples=1)",
    ("model.py", 385): "idx = torch.cat((idx, idx_next), dim=1)",
    ("train.py", 43): "wandb_log = True",
    ("train.py", 48): "gradient_accumulation_steps = 5 * 8",
    ("train.py", 49): "batch_size = 12",
    ("train.py", 50): "block_size = 1024",
    ("train.py", 56): "bias = False",
    ("train.py", 58): "learning_rate = 6e-4",
    ("train.py", 59): "max_iters = 600000",
    ("train.py", 60): "weight_decay = 1e-1",
    ("train.py", 61): "beta1 = 0.9",
    ("train.py", 62): "beta2 = 0.95",
    ("train.py", 63): "grad_clip = 1.0",
    ("train.py", 66): "warmup_iters = 2000",
    ("train.py", 67): "lr_decay_iters = 600000",
    ("train.py", 68): "min_lr = 6e-5",
    ("train.py", 73): "dtype = 'bfloat16' if torch.cuda.is_available() and "
                      "torch.cuda.is_bf16_supported() else 'float16'",
    ("train.py", 74): "compile = True",
    ("train.py", 95): "gradient_accumulation_steps //= ddp_world_size",
    ("train.py", 101): "tokens_per_iter = gradient_accumulation_steps * ddp_world_size * "
                       "batch_size * block_size",
    ("train.py", 107): "torch.backends.cuda.matmul.allow_tf32 = True",
    ("train.py", 108): "torch.backends.cudnn.allow_tf32 = True",
    ("train.py", 112): "torch.amp.autocast(device_type=device_type, dtype=ptdtype)",
    ("train.py", 123): "ix = torch.randint(len(data) - block_size, (batch_size,))",
    ("train.py", 124): "x = torch.stack([torch.from_numpy((data[i:i+block_size])",
    ("train.py", 125): "y = torch.stack([torch.from_numpy((data[i+1:i+1+block_size])",
    ("train.py", 155): "else 50304",
    ("train.py", 191): "model.crop_block_size(block_size)",
    ("train.py", 196): "scaler = torch.cuda.amp.GradScaler(enabled=(dtype == 'float16'))",
    ("train.py", 199): "optimizer = model.configure_optimizers(weight_decay, learning_rate, "
                       "(beta1, beta2), device_type)",
    ("train.py", 208): "model = torch.compile(model)",
    ("train.py", 234): "return learning_rate * (it + 1) / (warmup_iters + 1)",
    ("train.py", 241): "coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))",
    ("train.py", 298): "model.require_backward_grad_sync = (micro_step == "
                       "gradient_accumulation_steps - 1)",
    ("train.py", 301): "loss = loss / gradient_accumulation_steps",
    ("train.py", 305): "scaler.scale(loss).backward()",
    ("train.py", 308): "scaler.unscale_(optimizer)",
    ("train.py", 309): "torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)",
    ("train.py", 325): "mfu = raw_model.estimate_mfu(batch_size * gradient_accumulation_steps, "
                       "dt)",
    ("sample.py", 14): 'start = "\\n"',
    ("sample.py", 15): "num_samples = 10",
    ("sample.py", 16): "max_new_tokens = 500",
    ("sample.py", 17): "temperature = 0.8",
    ("sample.py", 18): "top_k = 200",
    ("sample.py", 28): "torch.backends.cuda.matmul.allow_tf32 = True",
    ("sample.py", 87): "y = model.generate(x, max_new_tokens, temperature=temperature, "
                       "top_k=top_k)",
}

# `file.py:LINE` or `file.py:LINE-LINE`, the file possibly with one folder (generation/utils.py)
CITATION = re.compile(r"((?:[A-Za-z_]+/)?[A-Za-z_0-9]+\.py):(\d+)(?:-\d+)?")


def doc_citations(text: str) -> list[tuple[str, int]]:
    """Every (file, first line) a text cites as `file.py:LINE`, in order, repeats dropped.

    Args:
      text: markdown, such as docs/analysis.md.

    Returns:
      [(short file name, line)], the file as written (modeling_gpt2.py, generation/utils.py).
    """
    seen = {}
    for m in CITATION.finditer(text):
        seen.setdefault((m.group(1), int(m.group(2))), None)
    return list(seen)


def transformers_root() -> Optional[tuple[str, str]]:
    """(version, package directory) of the installed transformers, or None without it."""
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__, os.path.dirname(transformers.__file__)


def stale_citations(table: dict[tuple[str, int], str], root: str,
                    files: Optional[dict[str, str]] = None) -> list[str]:
    """The rows of `table` whose line no longer holds its text, each as one readable line.

    Args:
      table: {(short file, line): expected substring}, such as TRANSFORMERS.
      root: the directory the files are under (the transformers package, a nanoGPT checkout).
      files: short name -> path under root (TRANSFORMERS_FILES); None: the name is the path.

    Returns:
      [] when every line says what the doc says it does; else one message per stale row,
      quoting what the line holds now.
    """
    files = files or {}
    cache: dict[str, list[str]] = {}
    bad = []
    for (name, line), want in sorted(table.items()):
        path = os.path.join(root, files.get(name, name))
        if path not in cache:
            try:
                with open(path, encoding="utf-8") as f:
                    cache[path] = f.read().splitlines()
            except OSError as e:
                cache[path] = []
                bad.append(f"{name}: cannot read {path} ({e.strerror})")
        lines = cache[path]
        have = lines[line - 1] if 0 < line <= len(lines) else "<past the end>"
        if lines and want not in have:
            bad.append(f"{name}:{line} should hold {want!r}, holds {have.strip()!r}")
    return bad
