"""The Hugging Face Flax GPT-2 train step, run by the train section (flax_peer.py) in its own
process under another Python: FlaxGPT2LMHeadModule exists only in transformers < 5, which this
package's environment does not have. Run as a script, it imports no gpt_jax module, only what
that side environment holds (numpy, jax, flax, optax, transformers < 5, safetensors).

    SIDE_PYTHON gpt_jax/lab/bench/flax_worker.py

One JSON object per line each way; every request gets one answer line:
  -> {"cmd": "setup", "hf_dir": DIR, "batches": FILE.npy, "train": {learning_rate, min_lr,
      warmup_iters, lr_decay_iters, weight_decay, beta1, beta2, grad_clip}}
     DIR: config.json + model.safetensors (gpt_jax.checkpoint.hf.to_hf); FILE: int32 (N, B, T + 1) token
     batches, used in turn. Compiles and runs the first step.
  <- {"ok": true, "compile_s": S, "loss0": the first step's loss (before any update)}
  -> {"cmd": "step"}
  <- {"ok": true, "seconds": wall, "cpu_seconds": this process's CPU time, "loss": loss}
  -> {"cmd": "quit"}
  Errors: {"ok": false, "error": "..."}.
Between requests the worker blocks on stdin, so a parent that alternates it with its own step
gives each the whole machine in turn.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import numpy as np


def load_hf_dir(hf_dir):
    """(config dict, {name: array}) with the 'transformer.' prefix dropped."""
    from safetensors.numpy import load_file
    with open(os.path.join(hf_dir, "config.json")) as f:
        conf = json.load(f)
    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    return conf, {k.removeprefix("transformer."): v for k, v in tensors.items()}


def flax_params(t, n_layer):
    """FlaxGPT2LMHeadModule's tree from HF PyTorch tensor names. PyTorch Conv1D weights are
    (in, out); FlaxConv1D kernels are (out, in)."""
    def dense(name):
        return {"kernel": t[f"{name}.weight"].T, "bias": t[f"{name}.bias"]}

    def norm(name):
        return {"scale": t[f"{name}.weight"], "bias": t[f"{name}.bias"]}
    p = {"wte": {"embedding": t["wte.weight"]}, "wpe": {"embedding": t["wpe.weight"]},
         "ln_f": norm("ln_f"), "h": {}}
    for i in range(n_layer):
        p["h"][str(i)] = {"ln_1": norm(f"h.{i}.ln_1"), "ln_2": norm(f"h.{i}.ln_2"),
                          "attn": {"c_attn": dense(f"h.{i}.attn.c_attn"),
                                   "c_proj": dense(f"h.{i}.attn.c_proj")},
                          "mlp": {"c_fc": dense(f"h.{i}.mlp.c_fc"),
                                  "c_proj": dense(f"h.{i}.mlp.c_proj")}}
    return {"transformer": p}


def optimizer(tr):
    """gpt_jax.train.optimizer.make_optimizer's recipe, restated (this process cannot import it):
    global-norm clipping, AdamW on optax's warm-up + cosine schedule at step + 1, weight decay
    on kernels and embeddings only."""
    import jax
    import optax
    sched = optax.warmup_cosine_decay_schedule(0.0, tr["learning_rate"], tr["warmup_iters"],
                                               tr["lr_decay_iters"], tr["min_lr"])

    def mask(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: getattr(path[-1], "key", None) in ("kernel", "embedding"), params)
    parts = [optax.clip_by_global_norm(tr["grad_clip"])] if tr["grad_clip"] > 0 else []
    parts.append(optax.adamw(lambda s: sched(s + 1), b1=tr["beta1"], b2=tr["beta2"], eps=1e-8,
                             weight_decay=tr["weight_decay"], mask=mask))
    return optax.chain(*parts)


class FlaxStep:
    """The jitted, donated train step of FlaxGPT2LMHeadModule (float32, no dropout) with
    optax's integer-label cross-entropy on its logits."""

    def __init__(self, hf_dir, tr, first_batch):
        import jax
        import jax.numpy as jnp
        import optax
        from transformers import GPT2Config
        from transformers.models.gpt2.modeling_flax_gpt2 import FlaxGPT2LMHeadModule
        conf, tensors = load_hf_dir(hf_dir)
        config = GPT2Config(**{k: conf[k] for k in ("vocab_size", "n_positions", "n_embd",
                                                      "n_layer", "n_head")},
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        module = FlaxGPT2LMHeadModule(config, dtype=jnp.float32)
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(np.ascontiguousarray(a)),
                                        flax_params(tensors, config.n_layer))
        tx = optimizer(tr)

        def loss_fn(params, tokens):
            x = tokens[:, :-1]
            pos = jnp.broadcast_to(jnp.arange(x.shape[1])[None], x.shape)
            # attention_mask=None: the causal mask alone (no padding), HF Flax's cheapest path
            logits = module.apply({"params": params}, x, None, pos, deterministic=True).logits
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

        def step(state, tokens):
            params, opt_state = state
            loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        self.state = (params, tx.init(params))
        t0 = time.perf_counter()
        self.step_fn = jax.jit(step, donate_argnums=(0,)).lower(self.state,
                                                                 first_batch).compile()
        self.compile_s = time.perf_counter() - t0

    def __call__(self, tokens):
        self.state, loss = self.step_fn(self.state, tokens)
        return float(loss)   # float() waits for the step


def main():
    out = sys.stdout
    sys.stdout = sys.stderr   # library chatter must not corrupt the protocol

    def reply(obj):
        out.write(json.dumps(obj) + "\n")
        out.flush()
    step, batches, i = None, None, 0
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if req["cmd"] == "quit":
                reply({"ok": True})
                return
            if req["cmd"] == "setup":
                batches = np.load(req["batches"])
                step = FlaxStep(req["hf_dir"], req["train"], batches[0])
                reply({"ok": True, "compile_s": step.compile_s, "loss0": step(batches[0])})
                i = 1
            elif req["cmd"] == "step":
                t0, c0 = time.perf_counter(), time.process_time()
                loss = step(batches[i % len(batches)])
                reply({"ok": True, "seconds": time.perf_counter() - t0,
                       "cpu_seconds": time.process_time() - c0, "loss": loss})
                i += 1
            else:
                reply({"ok": False, "error": f"unknown cmd {req['cmd']!r}"})
        except Exception as e:  # noqa: BLE001 - every failure goes back to the parent as a line
            traceback.print_exc()
            reply({"ok": False, "error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
