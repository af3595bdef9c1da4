"""GPT-2 itself: config, modules, ops, fused head+loss, layer stacking, FLOPs, tokenizer, params checks, sharding."""
