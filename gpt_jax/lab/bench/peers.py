"""The Hugging Face PyTorch peers the training and decoding sections time against ours, on the
same weights (torch and transformers are optional: without them those rows are left out)."""
from __future__ import annotations

import logging
import os
import sys

import jax
import numpy as np

from gpt_jax.checkpoint.hf import to_transformers
from gpt_jax.lab.bench.harness import Context
from gpt_jax.model.config import GPTConfig
from gpt_jax.model.tokenizer import EOT_TOKEN, bpe_files


def peer_device() -> tuple[str, str]:
    """(torch device, dtype) of the PyTorch peers: where ours run, as ours compute there
    (float32 on the CPU; bfloat16 on a GPU, as the GPU suite's rows)."""
    return ("cuda", "bfloat16") if jax.default_backend() == "gpu" else ("cpu", "float32")


def have_peers(ctx: Context, section: str) -> bool:
    """Whether to time the Hugging Face PyTorch peers: installed, not --peers false, and on
    the machine ours run on (the CPU, or a GPU that this torch build has CUDA for: against
    another device the ratio would compare two machines). The option peers="accelerator"
    (the GPU suite's, when asked for) times them on a GPU only."""
    if not ctx.options.get("peers", True):
        return False
    backend = jax.default_backend()
    if ctx.options.get("peers") == "accelerator" and backend == "cpu":
        return False
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError:
        print(f"[bench] {section}: torch/transformers missing, skipping the Hugging Face peer "
              f"rows (pip install 'gpt-jax[test]')", file=sys.stderr)
        return False
    if backend != "cpu" and not (backend == "gpu" and torch.cuda.is_available()):
        print(f"[bench] {section}: ours run on the {backend} and this torch build cannot: "
              f"leaving the Hugging Face peers out", file=sys.stderr)
        return False
    # All cores, as HF would use them (bench.py --torch_threads overrides: on a machine that
    # other jobs load, OpenMP threads that spin-wait for a descheduled peer crawl).
    torch.set_num_threads(ctx.options.get("torch_threads") or os.cpu_count() or 1)
    return True


def torch_train_step(params, cfg: GPTConfig, tc):
    """A Hugging Face GPT2LMHeadModel + torch AdamW step with our recipe (same weights, decay
    groups, clipping): the peer, on peer_device(). Returns step(tokens (B, T + 1) numpy) ->
    loss float."""
    import torch
    device, dtype = peer_device()
    model = to_transformers(params, cfg).to(device, getattr(torch, dtype))
    model.train()
    opt = torch_adamw(model, tc)

    def step(tokens):
        x = torch.from_numpy(tokens[:, :-1].astype(np.int64)).to(device)
        y = torch.from_numpy(tokens[:, 1:].astype(np.int64)).to(device)
        return torch_update(model, opt, model(input_ids=x).logits, y, tc).item()
    return step


def torch_adamw(model, tc, **kwargs):
    """torch AdamW with our recipe: weight decay on the matrices only, tc's lr and betas.
    kwargs: AdamW's implementation switches (fused=True, foreach=True)."""
    import torch
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), eps=1e-8, **kwargs)


def torch_update(model, opt, logits, y, tc):
    """The rest of a peer's train step: float32 cross-entropy of logits (B, T, V) against y
    (B, T), backward, clipping to tc.grad_clip, opt.step, zero_grad. Returns the loss tensor."""
    import torch
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                             y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def params_to_hf(params, cfg: GPTConfig):
    """The PyTorch peer for decoding: our weights in a GPT2LMHeadModel on peer_device() that
    generates exactly max_new_tokens (no EOS stop)."""
    import torch
    device, dtype = peer_device()
    model = to_transformers(params, cfg).to(device, getattr(torch, dtype))
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def lm_eval_hf(params, cfg: GPTConfig, batch_size: int, section: str):
    """lm-eval's own Hugging Face backend (HFLM: transformers + PyTorch, the scorer everyone's
    lm-eval numbers come from) over our weights, or None, with a note on stderr, when lm-eval
    is not installed. Its tokenizer is built from the local BPE files (no download)."""
    try:
        import lm_eval.models  # noqa: F401 - loads lm-eval's own models into its registry
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        print(f"[bench] {section}: lm-eval missing, skipping its Hugging Face backend rows "
              f"(pip install 'gpt-jax[eval]')", file=sys.stderr)
        return None
    import transformers
    from tokenizers import ByteLevelBPETokenizer
    vocab_bpe, encoder_json = bpe_files()
    # transformers 5 builds an empty GPT-2 tokenizer from vocab/merges files: wrap the
    # tokenizers library's byte-level BPE instead (docs/design.md, "Things known to bite").
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=ByteLevelBPETokenizer(encoder_json, vocab_bpe),
        bos_token=EOT_TOKEN, eos_token=EOT_TOKEN, unk_token=EOT_TOKEN)
    # Passing a built model is deliberate here: HFLM's warnings about it would only be noise.
    quiet = logging.getLogger("lm_eval.models.huggingface")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return HFLM(pretrained=to_transformers(params, cfg).eval(), tokenizer=tokenizer,
                    batch_size=batch_size, device="cpu")
    finally:
        quiet.setLevel(level)
