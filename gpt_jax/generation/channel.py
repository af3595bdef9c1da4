"""The host side of a streamed decode: each step of the compiled loop hands its tokens to the
queue of its stream (one io_callback with one packed int32 operand) and learns whether the
consumer still wants more. generate_stream (streaming.py) opens a stream, the loop reports to it
(report), and the stream is closed when the consumer stops."""
from __future__ import annotations

import itertools
import queue

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback


LISTENERS: dict[int, "queue.Queue"] = {}   # stream id -> its queue (one per generate_stream)
CANCELLED: set[int] = set()
IDS = itertools.count(1)


def on_step(packed) -> np.bool_:
    """The host side of report(): packed int32 [stream id, step, B, tokens (B), done (B), and
    where asked log-probs (B) as float32 bits], one array because each operand of a callback
    is a transfer of its own (a third of the callback's cost with three operands)."""
    packed = np.asarray(packed)
    sid, i, B = (int(x) for x in packed[:3])
    q = LISTENERS.get(sid)
    if q is None or sid in CANCELLED:
        return np.bool_(False)
    tokens, done, lps = packed[3:3 + B], packed[3 + B:3 + 2 * B], packed[3 + 2 * B:]
    q.put((i, tokens.copy(), lps.view(np.float32).copy() if len(lps) else None,
           done.astype(bool)))
    return np.bool_(True)


def report(stream_id, i, tokens, logprobs, done):
    """Inside the decode loop: hand step i's tokens (B,), log-probs (B,) or None and done (B,)
    to stream stream_id; a traced bool, False once the consumer has gone."""
    head = (jnp.asarray(stream_id, jnp.int32), jnp.asarray(i, jnp.int32),
            jnp.int32(tokens.shape[0]))
    parts = [jnp.stack(head),
             tokens.astype(jnp.int32), done.astype(jnp.int32)]
    if logprobs is not None:
        parts.append(jax.lax.bitcast_convert_type(logprobs.astype(jnp.float32), jnp.int32))
    return io_callback(on_step, jax.ShapeDtypeStruct((), np.bool_), jnp.concatenate(parts),
                       ordered=False)


def open_stream() -> tuple[int, "queue.Queue"]:
    """A new stream: (its id, the queue its steps arrive on)."""
    sid = next(IDS)
    q: queue.Queue = queue.Queue()
    LISTENERS[sid] = q
    return sid, q


def cancel(sid: int) -> None:
    """The consumer has gone: the loop's next report returns False, ending the decode."""
    CANCELLED.add(sid)


def close_stream(sid: int) -> None:
    """Forget a stream once its decode has ended."""
    LISTENERS.pop(sid, None)
    CANCELLED.discard(sid)
