"""The lm-evaluation-harness model "gpt_jax": importing this module registers it.

  import gpt_jax.evals, lm_eval
  lm_eval.simple_evaluate(model="gpt_jax", model_args={"init_from": "gpt2"},
                          tasks=["lambada_openai", "hellaswag"])
  # or: python eval.py --harness lambada_openai,hellaswag --init_from gpt2

model_args: init_from (a train.py out_dir, a gpt2* hub name or a Hugging Face directory),
step (an out_dir's checkpoint step; default the latest),
dtype (float32 | bfloat16 compute), seed (for tasks that sample), max_gen_toks (default 256),
plus the batch_size, max_batch_size and device that lm-eval passes. The answers are those of
lm-eval's own "hf" backend on the same weights, request by request (tests/evaluation/test_evals.py):
- loglikelihood: TemplateLM's encoding (the same as the hf backend's), scored by
  gpt_jax.evaluation.scoring.loglikelihood;
- loglikelihood_rolling: gpt_jax.evaluation.scoring.token_logprobs at stride block_size, which is
  lm-eval's rolling windows with <|endoftext|> as the prefix token;
- generate_until: gpt_jax.generate, greedy unless the task samples (do_sample / temperature,
  top_k, top_p), contexts cut from the left to block_size - max_gen_toks, batched; each row
  stops in the loop at <|endoftext|> or an `until` string (stop strings, the loop ending once
  all rows have); the text is cut at <|endoftext|> and at the first of the `until` strings,
  as the hf backend does.

This module imports lm_eval; `import gpt_jax` does not import it.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Optional

import jax

# lm-eval (0.4.13) loads its own models (hf, vllm, ...) into its registry only while the
# registry is empty: load them before registering ours, or registering hides them.
import lm_eval.models  # noqa: F401
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (handle_stop_sequences, normalize_gen_kwargs,
                                  postprocess_generated_text)
from tqdm.auto import tqdm

import gpt_jax.evaluation.scoring as scoring
from gpt_jax.checkpoint.load import check_step_source
from gpt_jax.errors import UserError, is_network_error, offline_note
from gpt_jax.evaluation.tasks import load_model
from gpt_jax.generation.decoding import generate
from gpt_jax.model.config import DTYPES
from gpt_jax.model.tokenizer import EOT_ID, EOT_TOKEN, get_tokenizer

log = logging.getLogger(__name__)

GEN_BATCH = 16        # generate_until rows per batch when lm-eval gives no batch size

_PLATFORMS = {"cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "tpu": "tpu", "rocm": "gpu"}


def _count(value, name: str, *, auto: bool = False) -> Optional[int]:
    """A positive integer model argument (lm-eval hands them over as ints, floats or strings):
    None for None (and, with auto, for "auto" / "auto:N": our length-based default batch);
    2.5 or "2.5" is an error, never rounded."""
    if value is None or (auto and str(value).startswith("auto")):
        return None
    n = None
    if isinstance(value, str) and value.strip().isdigit():
        n = int(value)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    if n is None or n < 1:
        also = " or 'auto'" if auto else ""
        raise UserError(f"the gpt_jax model's {name} must be a positive integer{also}, "
                        f"got {value!r}")
    return n


# a damaged latest checkpoint: how to pick an intact one (eval.py --harness --step N is
# model_args step=N)
STEP_HINT = "evaluate the latest with --step {step}, or model_args step={step}"


def _seed(value) -> int:
    """seed: an integer in [0, 2**32) (jax keys keep 32 bits), as an int or a string."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 0 <= value < 2**32:
        raise UserError(f"the gpt_jax model's seed must be an integer in [0, 2**32), "
                        f"got {value!r}")
    return int(value)


MODEL_ARGS = ("init_from", "step", "dtype", "seed", "max_gen_toks", "batch_size",
              "max_batch_size", "device")


@register_model("gpt_jax")
class GptJaxLM(TemplateLM):
    """An lm-eval LM over a gpt_jax model (see the module docstring)."""

    def __init__(self, init_from: Optional[str] = None, *, params=None, cfg=None, step=None,
                 dtype: Optional[str] = None, seed: int = 1234, max_gen_toks: int = 256,
                 batch_size=None, max_batch_size=None, device: Optional[str] = None,
                 **unknown):
        super().__init__()
        # Every argument checked before the model loads: one UserError line each.
        if unknown:
            raise UserError(f"the gpt_jax model has no argument(s) {', '.join(sorted(unknown))}; "
                            f"its model_args are {', '.join(MODEL_ARGS)}")
        seed = _seed(seed)
        if step is not None and not (str(step).strip().isdigit()
                                     and not isinstance(step, (bool, float))):
            raise UserError(f"the gpt_jax model's step must be a checkpoint step (an integer "
                            f">= 0), got {step!r}")
        self._batch = _count(batch_size, "batch_size", auto=True)
        self._max_batch = _count(max_batch_size, "max_batch_size")
        self._max_gen_toks = _count(max_gen_toks, "max_gen_toks")
        if dtype is not None and dtype not in DTYPES:
            raise UserError(f"the gpt_jax model's dtype must be one of {', '.join(DTYPES)}, "
                            f"got {dtype!r}")
        if params is None:
            if init_from is None:
                raise UserError("the gpt_jax model needs model_args init_from=... (a train.py "
                                "out_dir, a gpt2* name or a Hugging Face directory)")
            params, cfg = load_model(str(init_from), None if step is None else int(step),
                                     step_hint=STEP_HINT, step_flag="step=")
        elif cfg is None:
            raise UserError("pass cfg with params")
        if dtype is not None:
            cfg = cfg.replace(dtype=str(dtype))
        self.params, self.cfg = self._place(params, device), cfg
        self.enc = get_tokenizer()
        # max_batch_size bounds lm-eval's "auto" search in other backends; ours sizes batches
        # by sequence length (gpt_jax.evaluation.scoring.score_rows), so it only caps an explicit one.
        if self._batch is not None and self._max_batch is not None:
            self._batch = min(self._batch, self._max_batch)
        self._key = jax.random.key(seed)

    @staticmethod
    def _place(params, device):
        """device (lm-eval's "cpu", "cuda", "cuda:0", ...): the params go to the first jax
        device of that platform when jax has one; otherwise they stay where jax puts them."""
        if device is None:
            return params
        platform = _PLATFORMS.get(str(device).split(":")[0].lower())
        try:
            target = jax.devices(platform)[0] if platform else None
        except RuntimeError:
            target = None
        if target is None:
            log.warning("device %r is not available to jax; using %s", device,
                        jax.default_backend())
            return params
        return jax.device_put(params, target)

    # -- what lm-eval asks of a TemplateLM ----------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return EOT_ID

    @property
    def prefix_token_id(self) -> int:
        return EOT_ID

    @property
    def max_length(self) -> int:
        return self.cfg.block_size

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self):
        return self._batch

    @property
    def tokenizer_name(self) -> str:
        return "gpt2"

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        # GPT-2 adds no BOS; "<|endoftext|>" in the text is the special token, as in the HF
        # tokenizer.
        return self.enc.encode(string, allowed_special={EOT_TOKEN})

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        tokens = list(tokens)
        if skip_special_tokens:
            tokens = [t for t in tokens if t != EOT_ID]
        return self.enc.decode(tokens)

    def get_model_info(self) -> dict:
        return {"model_num_parameters": int(sum(np.size(x) for x in
                                                jax.tree_util.tree_leaves(self.params))),
                "model_dtype": self.cfg.dtype}

    # -- loglikelihood --------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """requests: [((context, continuation) strings or None, context ids, continuation ids)]."""
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        with tqdm(total=len(pairs), disable=disable_tqdm,
                  desc="Running loglikelihood requests") as bar:
            answers = scoring.loglikelihood(self.params, self.cfg, pairs,
                                            batch_size=self._batch, progress=bar.update)
        for (strings, _, _), answer in zip(requests, answers):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, answer)
        return answers

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [self.tok_encode(req.args[0]) for req in requests]
        total = sum(scoring.n_windows(len(t), self.cfg) for t in texts)
        with tqdm(total=total, disable=disable_tqdm, unit="window",
                  desc="Running loglikelihood_rolling requests") as bar:
            logps = scoring.token_logprobs_batch(self.params, self.cfg, texts,
                                                 batch_size=self._batch, progress=bar.update)
        out = []
        for req, logp in zip(requests, logps):
            value = float(np.sum(logp, dtype=np.float64))
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), value)
            out.append(value)
        return out

    # -- generate_until ---------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out: list = [None] * len(requests)
        groups: dict = {}              # requests with the same gen_kwargs are batched together
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        with tqdm(total=len(requests), disable=disable_tqdm,
                  desc="Running generate_until requests") as bar:
            for idx in groups.values():
                context, gen_kwargs = requests[idx[0]].args
                kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=EOT_TOKEN)
                max_new = kwargs.pop("max_gen_toks")
                sampling = self._sampling(kwargs)
                max_ctx = self.cfg.block_size - max_new
                if max_ctx < 1:
                    raise UserError(f"max_gen_toks {max_new} leaves no room for a context in "
                                    f"the model's block_size {self.cfg.block_size}")
                prompts = {i: (self.tok_encode(requests[i].args[0]) or [EOT_ID])[-max_ctx:]
                           for i in idx}
                order = sorted(idx, key=lambda i: -len(prompts[i]))   # longest first
                size = self._batch or GEN_BATCH
                for b in range(0, len(order), size):
                    batch = order[b:b + size]
                    texts = self._generate([prompts[i] for i in batch], max_new, until, sampling)
                    for i, text in zip(batch, texts):
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(batch))
        return out

    def _sampling(self, kwargs: dict) -> dict:
        do_sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
        if kwargs:
            log.warning("gpt_jax ignores these generation arguments: %s", sorted(kwargs))
        if not do_sample or temperature == 0:
            return dict(temperature=0.0)
        return dict(temperature=temperature, top_k=None if top_k in (None, 0) else int(top_k),
                    top_p=None if top_p in (None, 1, 1.0) else float(top_p))

    def _text(self, tokens: list[int], until: list[str]) -> str:
        if EOT_ID in tokens:
            tokens = tokens[:tokens.index(EOT_ID)]
        return postprocess_generated_text(self.enc.decode(tokens), until, None)

    def _generate(self, prompts: list[list[int]], max_new: int, until: list[str],
                  sampling: dict) -> list[str]:
        """One decode of up to max_new tokens in which a row stops at <|endoftext|> or at the
        end of any `until` string in its new text (the prompt is not searched, as lm-eval's
        hf backend does not), and the loop ends once every row has stopped."""
        self._key, key = jax.random.split(self._key)
        stop = [s for s in until if s]
        # A batch padded to a power of two rows: the last, smaller batch reuses a program.
        rows = prompts + [prompts[0]] * ((1 << (len(prompts) - 1).bit_length()) - len(prompts))
        toks = np.asarray(generate(self.params, self.cfg, rows, max_new, key, eos_id=EOT_ID,
                                   stop=stop, stop_in_prompt=False, **sampling))
        return [self._text(row, until) for row in toks.tolist()[:len(prompts)]]


def run_harness(init_from: str, task_names: list[str], *, include_path: Optional[str] = None,
                batch_size: Optional[int] = None, limit: Optional[int] = None,
                step: Optional[int] = None) -> dict:
    """`python eval.py --harness`: lm_eval.simple_evaluate of the tasks with the "gpt_jax" model
    (task_names checked first; include_path: a directory of extra task YAML files). Returns
    lm-eval's results dict (results_table prints it)."""
    import multiprocessing

    import lm_eval
    from lm_eval.tasks import TaskManager
    check_step_source(init_from, step, "--step ")   # eval.py's flag, before lm-eval starts
    # lm-eval computes bootstrap stderrs in a multiprocessing Pool; forking a process that runs
    # JAX's threads can deadlock, so the workers come from a fork server instead.
    multiprocessing.set_start_method("forkserver", force=True)
    if include_path and not os.path.isdir(include_path):
        raise UserError(f"--include_path {include_path} is not a directory")
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in task_names if not manager.match_tasks([t])]
    if unknown:
        raise UserError(f"unknown lm-eval task(s) {', '.join(unknown)}: see `lm-eval ls tasks`"
                        f"{'' if include_path else ', or pass --include_path DIR'}")
    try:
        return lm_eval.simple_evaluate(
            model="gpt_jax", model_args={"init_from": init_from,
                                         **({} if step is None else {"step": step})},
            tasks=task_names,
            batch_size=batch_size, limit=limit, task_manager=manager)
    except Exception as e:
        if not is_network_error(e):
            raise
        import datasets.config
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"lm-eval task(s) {', '.join(task_names)} need their datasets from the Hugging "
            f"Face Hub, which cannot be reached ({why}{offline_note()}): run once with the "
            f"network to cache them in {datasets.config.HF_DATASETS_CACHE} (later runs, "
            f"HF_DATASETS_OFFLINE=1 too, read them there), or use eval.py --task with "
            f"--data FILE") from None


def results_table(results: dict) -> str:
    """lm-eval's table of a simple_evaluate result."""
    import lm_eval.utils
    return lm_eval.utils.make_table(results)
