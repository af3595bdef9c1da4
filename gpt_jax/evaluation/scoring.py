"""Scoring text with a GPT: log-likelihoods of continuations and per-token log-probs of texts.

log_probs scores every position of a batch of equal-length rows in one call. loglikelihood and
token_logprobs follow lm-evaluation-harness's rules, so numbers compare with everyone else's:
- loglikelihood: an empty context becomes [<|endoftext|>]; the model reads the last block_size
  tokens of (context + continuation)[:-1], so a long context is cut from the left; the answer is
  the summed log p of the continuation and whether every one of its tokens is the argmax.
- token_logprobs: token 0 is conditioned on <|endoftext|>; windows of block_size input tokens
  over [EOT] + tokens start at 0, stride, 2*stride, ... and the last one is moved left to end
  where the sequence ends; each token is scored by the first window that predicts it.
  stride = block_size is lm-eval's rolling loglikelihood; a smaller stride is Hugging Face's
  "perplexity of fixed-length models" (every token then sees >= block_size - stride + 1 tokens).

Both reduce to rows of (input tokens, the positions to score, their targets). Rows are sorted by
length and batched; each batch is right-padded to a bucketed length T (2^k or 1.5 * 2^k) with
bucketed S scored positions, so a whole benchmark runs through a handful of compiled programs.
Only the S scored positions of a row go through the tied head and a log-softmax over the
vocabulary: (B, S, V) logits live inside one compiled call and never leave it, and one batch is
in flight at a time (the next is dispatched before the last one's (B, S) results are read).
"""
from __future__ import annotations

import functools
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gpt_jax.model.config import GPTConfig
from gpt_jax.model.checks import check_causal, check_params, check_positive_int, check_token_ids
from gpt_jax.errors import ScoreMemoryError, TokenError, UserError
from gpt_jax.generation.memory import (MEMORY_CHECK_ABOVE, MEMORY_FRACTION, available_memory_bytes,
                            format_gib)
from gpt_jax.model.gpt import GPT
from gpt_jax.model.sharding import batch_devices, batch_sharding, params_mesh
from gpt_jax.evaluation.rows import (Row, check_stride, n_windows, request_row, token_ids,  # noqa: F401
                                window_rows)

# Default batch shape: at most MAX_ROWS rows, MAX_TOKENS input tokens and MAX_SCORED scored
# positions per batch. MAX_SCORED bounds the in-call float32 logits to 2048 * V * 4 bytes
# (412 MB for GPT-2's 50257 ids); MAX_TOKENS bounds the activations.
MAX_ROWS = 32
MAX_TOKENS = 8192
MAX_SCORED = 2048


def bucket(n: int, cap: int) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (2^k and 1.5 * 2^k) that holds n, at
    most cap: padding wastes at most a third, and lengths share few compiled programs."""
    b = 1 << max(0, (n - 1).bit_length())     # the power of two >= n
    if b >= 4 and b * 3 // 4 >= n:
        b = b * 3 // 4
    return min(b, cap)


# -- the compiled scorer ------------------------------------------------------------------------

class Scorer:
    """The compiled scoring function of one GPTConfig.

    scorer(params, tokens, at, targets) -> (logp, greedy): tokens int32 (B, T) right-padded
    inputs; at int32 (B, S) the positions to score; targets int32 (B, S) the tokens they
    predict. logp float32 (B, S) is log p(target | inputs up to and including that position);
    greedy bool (B, S) says whether the target's logit is the largest. Only the B*S scored
    hidden states go through the head, so the (B, S, V) logits are the largest array.

    One jit-compiled program per input shape (B, T, S) and params layout/sharding. `traces`
    counts how many times the function was traced (once per new shape; calls with a shape seen
    before reuse its program), and `compile_seconds` sums the time of the calls that traced
    (tracing and compiling; execution is dispatched asynchronously and mostly not included).
    """

    def __init__(self, cfg: GPTConfig):
        check_causal(cfg, "scoring (log p(x_t | x_<t))")
        self.cfg = cfg
        self.traces = 0
        self.compile_seconds = 0.0
        self._fn = jax.jit(self._score)

    def _score(self, params, tokens, at, targets):
        self.traces += 1
        # Params in the GPT-2 layout or scan_layers' stacked "h" (a run's in-memory layout).
        model = GPT(self.cfg, scan_layers="h" in params)
        logits = model.apply({"params": params}, tokens, logits_at=at)      # (B, S, V)
        target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        top = jnp.max(logits, axis=-1)
        # logsumexp with the max already at hand (jax.nn.logsumexp would take it again).
        lse = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))
        # The target is the greedy token when its logit is the largest (an exact tie with
        # another id, which argmax would break by index, counts as greedy).
        return target - lse, target >= top

    def lower(self, params, tokens, at, targets):
        """jax's Lowered for these inputs (to inspect the program or time compilation apart)."""
        return self._fn.lower(params, tokens, at, targets)

    def __call__(self, params, tokens, at, targets):
        before, t0 = self.traces, time.perf_counter()
        out = self._fn(params, tokens, at, targets)
        if self.traces != before:
            self.compile_seconds += time.perf_counter() - t0
        return out


@functools.lru_cache(maxsize=8)
def get_scorer(cfg: GPTConfig) -> Scorer:
    """The Scorer that loglikelihood and token_logprobs use for cfg (one per config, kept)."""
    return Scorer(cfg)


def _check_batch_size(batch_size) -> Optional[int]:
    if batch_size is None:
        return None
    return check_positive_int(batch_size, "batch_size")


def _put_rows(mesh, arrays):
    """The arrays with their rows split over mesh (as generate() splits its prompts), so each
    device scores its own rows; as they are without a mesh."""
    if mesh is None:
        return arrays

    def put(a):  # every process holds the same host batch; each fills its own devices' slices
        rows = batch_sharding(mesh, ndim=a.ndim, batch_axis=0)
        return jax.make_array_from_callback(a.shape, rows, lambda idx: a[idx])
    return tuple(put(a) for a in arrays)


def _fetch(x) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def score_memory_bytes(cfg: GPTConfig, rows: int, T: int, S: int) -> int:
    """Bytes one scoring call of `rows` rows of T input tokens, S of them scored, allocates
    beyond the weights: its large buffers, each counted once (a lower bound of the peak, as
    memory.decode_memory_bytes is for a decode)."""
    C, H, V = cfg.n_embd, cfg.n_head, cfg.vocab_size
    item = np.dtype(cfg.compute_dtype).itemsize
    total = rows * (T + 2 * S) * 4               # tokens, positions and targets in
    total += 2 * rows * T * C * item             # the residual stream and a block's output
    total += rows * T * 4 * C * item             # the MLP's hidden layer
    total += rows * H * T * T * 4                # attention probabilities (float32)
    total += rows * S * V * 4                    # the scored positions' float32 logits
    return total


def rows_that_fit(cfg: GPTConfig, rows: int, T: int, S: int, *, given: bool,
                  split: int = 1) -> int:
    """rows, or fewer where `rows` rows of (T, S) would not fit in MEMORY_FRACTION of the
    memory free: a default batch (given False) shrinks to what fits; a batch the caller gave,
    or one row that does not fit, is a ScoreMemoryError naming the largest batch that fits.
    split: devices the rows are spread over (each holds rows / split)."""
    need = score_memory_bytes(cfg, -(-rows // split), T, S)
    if need < MEMORY_CHECK_ABOVE:
        return rows
    free = available_memory_bytes()
    if free is None or need <= MEMORY_FRACTION * free:
        return rows
    fit = int(MEMORY_FRACTION * free) // score_memory_bytes(cfg, 1, T, S) * split
    if not given and fit >= 1:
        return fit
    todo = (f"pass batch_size={fit} or less (eval.py --batch_size {fit})" if fit >= 1 else
            "use a smaller model")
    raise ScoreMemoryError(
        f"scoring {rows} rows of {T} tokens at a time would need about {format_gib(need)} "
        f"(activations and the logits of {S} positions a row) but {format_gib(free)} is "
        f"available (at most {MEMORY_FRACTION:.0%} of it is used): {todo}")


def score_rows(params, cfg: GPTConfig, rows: Sequence[Row], *, batch_size=None,
               progress: Optional[Callable[[int], None]] = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(logp float32 (n,), greedy bool (n,)) of each row's scored positions, in row order.

    Rows are sorted longest first (the largest batch, its compile and any memory error come
    first) and batched by `batch_size` rows (default: up to MAX_ROWS within the MAX_TOKENS and
    MAX_SCORED budgets). A batch_size above the number of rows is cut to it; one whose largest
    batch would not fit in memory is a ScoreMemoryError (a default batch shrinks to what fits),
    checked on the host before anything is compiled. progress(k) is called as each batch of k
    rows finishes."""
    batch_size = _check_batch_size(batch_size)
    check_params(params, cfg, stacked_ok=True)
    scorer = get_scorer(cfg)
    mesh = params_mesh(params)   # batch rows then go over all of its devices
    devices = batch_devices(mesh)
    n_scored = [len(r.targets) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: (-len(rows[i].inputs), -n_scored[i]))
    results: list = [None] * len(rows)
    if not rows:
        return results
    if batch_size is not None:
        batch_size = min(batch_size, len(rows))            # the work there is
    # The largest batch (the longest rows, with the most scored positions of any) sets the
    # memory a call needs: checked once, before the first compile.
    T = bucket(len(rows[order[0]].inputs), cfg.block_size)
    S = bucket(max(n_scored), T)
    largest = batch_size or max(1, min(MAX_ROWS, MAX_TOKENS // T, MAX_SCORED // S))
    cap = rows_that_fit(cfg, -(-largest // devices) * devices, T, S,
                        given=batch_size is not None, split=devices)

    def collect(pending):
        idx, (logp, greedy) = pending
        logp, greedy = _fetch(logp), _fetch(greedy)
        for b, i in enumerate(idx):
            results[i] = (logp[b, :n_scored[i]], greedy[b, :n_scored[i]])
        if progress is not None:
            progress(len(idx))

    pending, pos = None, 0
    while pos < len(order):
        # Sorted longest first, so the first row of a batch sets its length bucket.
        T = bucket(len(rows[order[pos]].inputs), cfg.block_size)
        if batch_size is None:
            S = bucket(max(n_scored[i] for i in order[pos:pos + MAX_ROWS]), T)
            B = max(1, min(MAX_ROWS, MAX_TOKENS // T, MAX_SCORED // S, cap))
        else:
            B = batch_size
        idx = order[pos:pos + B]
        S = bucket(max(n_scored[i] for i in idx), T)
        B = -(-B // devices) * devices                     # whole rows on every device
        tokens = np.zeros((B, T), np.int32)
        at = np.zeros((B, S), np.int32)
        targets = np.zeros((B, S), np.int32)
        for b, i in enumerate(idx):
            r = rows[i]
            tokens[b, :len(r.inputs)] = r.inputs
            at[b, :len(r.targets)] = r.first + np.arange(len(r.targets))
            targets[b, :len(r.targets)] = r.targets
        out = scorer(params, *_put_rows(mesh, (tokens, at, targets)))
        if pending is not None:
            collect(pending)                               # while this batch runs
        pending, pos = (idx, out), pos + len(idx)
    if pending is not None:
        collect(pending)
    return results


# -- the public functions ---------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=1)
def _log_probs(params, cfg: GPTConfig, tokens, mask):
    logits = GPT(cfg).apply({"params": params}, tokens[:, :-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    out = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return out if mask is None else jnp.where(mask, out, 0.0)


def log_probs(params, cfg: GPTConfig, tokens, mask=None):
    """Per-token log p(x_t | x_<t) of a batch of equal-length rows, every position scored.

    Args:
      params, cfg: the model.
      tokens: int (B, T), ids in [0, vocab_size), 2 <= T <= block_size + 1. Checked on the
        host (a device array is read back once for that), except inside a jax
        transformation, where they cannot be.
      mask: optional bool (B, T-1), the shape of the result; masked-out positions give 0.

    Returns:
      float32 (B, T-1): out[:, t] = log p(tokens[:, t+1] | tokens[:, :t+1]).

    Raises:
      TokenError (a UserError and ValueError): bad ids or shapes, a mask of the wrong shape.
      UserError: params that do not match cfg, a bidirectional cfg.
    """
    check_causal(cfg, "log_probs (log p(x_t | x_<t))")
    check_params(params, cfg)
    if not isinstance(tokens, jax.core.Tracer):
        tokens = check_token_ids(tokens, cfg.vocab_size, "tokens")
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2 or not 2 <= tokens.shape[1] <= cfg.block_size + 1:
        raise TokenError(f"log_probs needs tokens of shape (B, T) with 2 <= T <= block_size + 1 "
                         f"= {cfg.block_size + 1}, got shape {tokens.shape}")
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        if mask.shape != (tokens.shape[0], tokens.shape[1] - 1):
            raise TokenError(f"mask must have the result's shape "
                             f"{(tokens.shape[0], tokens.shape[1] - 1)}, got {mask.shape}")
    return _log_probs(params, cfg, tokens, mask)


def loglikelihood(params, cfg: GPTConfig, requests, *, batch_size: Optional[int] = None,
                  progress: Optional[Callable[[int], None]] = None) -> list[tuple[float, bool]]:
    """Score continuations given contexts with lm-eval's rules (module docstring): an empty
    context is [<|endoftext|>], the model reads the last block_size tokens.

    Args:
      params, cfg: the model.
      requests: [(context_ids, continuation_ids), ...], lists of token ids.
      batch_size: rows per compiled call (default: sized by length and free memory).
      progress: progress(k) is called as each batch of k requests finishes.

    Returns:
      [(sum of log p(continuation | context), whether every continuation token is the
      argmax), ...], one pair per request, in order.

    Raises:
      UserError: a continuation longer than block_size or empty, ids outside the vocabulary,
        malformed requests; ScoreMemoryError for a given batch_size that does not fit.
    """
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
        raise UserError("requests must be a list of (context_ids, continuation_ids) pairs")
    rows = []
    for i, req in enumerate(requests):
        if isinstance(req, (str, bytes)) or not isinstance(req, Sequence) or len(req) != 2:
            raise UserError(f"request {i} must be a (context_ids, continuation_ids) pair")
        context = token_ids(req[0], cfg, f"request {i}: the context")
        continuation = token_ids(req[1], cfg, f"request {i}: the continuation")
        if len(continuation) == 0:
            raise UserError(f"request {i}: the continuation is empty: nothing to score")
        if len(continuation) > cfg.block_size:
            raise UserError(f"request {i}: the continuation has {len(continuation)} tokens, more "
                            f"than the model's block_size {cfg.block_size}: it cannot be scored "
                            f"in one window (shorten it)")
        rows.append(request_row(context, continuation, cfg))
    scored = score_rows(params, cfg, rows, batch_size=batch_size, progress=progress)
    # Summed in float64 on the host, from the float32 per-token values.
    return [(float(np.sum(logp, dtype=np.float64)), bool(np.all(greedy)))
            for logp, greedy in scored]


def token_logprobs_batch(params, cfg: GPTConfig, texts, *, stride: Optional[int] = None,
                         batch_size: Optional[int] = None,
                         progress: Optional[Callable[[int], None]] = None) -> list[np.ndarray]:
    """token_logprobs of several texts, their windows batched together. progress(k) counts
    windows."""
    stride = check_stride(stride, cfg)
    rows, owner = [], []
    for t, text in enumerate(texts):
        ids = token_ids(text, cfg, "the text" if len(texts) == 1 else f"text {t}")
        windows = window_rows(ids, cfg, stride)
        rows += windows
        owner += [t] * len(windows)
    scored = score_rows(params, cfg, rows, batch_size=batch_size, progress=progress)
    out = [[] for _ in texts]
    for t, (logp, _) in zip(owner, scored):
        out[t].append(logp)
    return [np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
            for parts in out]


def token_logprobs(params, cfg: GPTConfig, tokens, *, stride: Optional[int] = None,
                   batch_size: Optional[int] = None,
                   progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Log p of every token of a text of any length, over sliding windows.

    Args:
      params, cfg: the model.
      tokens: the text's N token ids (1-D).
      stride: windows of block_size inputs start every stride tokens (default block_size:
        lm-eval's rolling loglikelihood; in [1, block_size]). Each token is scored by the
        first window that predicts it; token 0 is conditioned on <|endoftext|>.
      batch_size: windows per compiled call (default: sized by free memory).
      progress: progress(k) is called as each batch of k windows finishes.

    Returns:
      float32 (N,): log p of each token; the sum is the text's log-likelihood.

    Raises:
      UserError: ids outside the vocabulary, an empty text, a stride out of range.
    """
    return token_logprobs_batch(params, cfg, [tokens], stride=stride, batch_size=batch_size,
                                progress=progress)[0]
