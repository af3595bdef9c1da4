"""generate_stream(): the tokens of generate() as they are made, for a CLI or a server.

The decode is generate()'s own compiled loop (the same tokens for the same arguments) with one
host callback per step (jax.experimental.io_callback): it hands the step's tokens to a queue
and returns whether the consumer still wants more, which the loop's condition reads, so a
consumer that stops iterating ends the decode at the next step. The compiled loop runs in a
worker thread (JAX releases the GIL while it runs); the generator reads the queue.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Optional

import jax
import numpy as np

import gpt_jax.generation.channel as channel
from gpt_jax.errors import UserError
from gpt_jax.generation.config import settings_of
from gpt_jax.generation.decoding import generate_args
from gpt_jax.generation.loop import DECODER
from gpt_jax.generation.stopping import StopTextStream, check_stop
from gpt_jax.model.tokenizer import get_tokenizer


@dataclass
class Piece:
    """One step of a stream. step: the index of these tokens among the new ones; tokens int32
    (B,) (pad_id for rows already done); done (B,) bool, rows finished with or before this
    token; logprobs float32 (B,) when asked; text: each row's new text when asked (whole
    characters, cut before a stop string, "" once done), else None."""
    step: int
    tokens: np.ndarray
    done: np.ndarray
    logprobs: Optional[np.ndarray] = None
    text: Optional[list[str]] = None


def generate_stream(params, cfg, prompts, max_new_tokens: int = 64, key=None, *,
                    text: bool = False, config=None, **settings) -> Iterator[Piece]:
    """generate()'s tokens as the compiled loop makes them, one Piece per step.

    Args:
      As generate() (beam settings excepted), and text: also decode each row's new text
        (GPT-2 BPE; a row's pieces joined are its text cut before the first stop string).

    Returns:
      An iterator of Piece(step, tokens int32 (B,), done bool (B,), logprobs float32 (B,) or
      None, text [str] * B or None); the tokens are generate()'s with the same arguments.
      Stopping the iteration (break, close) ends the decode at its next step.

    Raises:
      UserError: as generate(), and a text that is not a bool, before the first Piece.
    """
    if not isinstance(text, (bool, np.bool_)):   # 'false' is truthy: booleans only
        raise UserError(f"text must be True or False, got {text!r}")
    args, static = generate_args(params, cfg, prompts, max_new_tokens, key=key, config=config,
                                 _stream=True, **settings)
    enc = None
    if text:
        enc = get_tokenizer()
        stops = check_stop(settings_of(config, settings).stop)
        streams = [StopTextStream(stops) for _ in range(args.tokens.shape[0])]
    sid, q = channel.open_stream()
    args = args._replace(values=args.values._replace(stream_id=np.int32(sid)))
    fail: list[BaseException] = []
    END = object()

    def work():
        try:
            jax.block_until_ready(DECODER.run(*args, **static))
        except BaseException as e:  # re-raised in the consumer
            fail.append(e)
        finally:
            q.put(END)

    worker = threading.Thread(target=work, name=f"gpt_jax-stream-{sid}", daemon=True)
    worker.start()
    eos, last = int(args.eos_id), static["max_new_tokens"] - 1
    before = np.zeros(args.tokens.shape[0], bool)   # rows done before this step
    try:
        while True:
            item = q.get()
            if item is END:
                break
            i, toks, lps, done = item
            pieces = None
            if enc is not None:
                pieces = []
                for b, t in enumerate(toks.tolist()):
                    if before[b]:
                        pieces.append("")
                        continue
                    piece = streams[b].feed(b"" if t == eos or t < 0 else
                                            enc.decode_single_token_bytes(t))
                    pieces.append(piece + streams[b].finish() if done[b] or i == last
                                  else piece)
            before = done
            yield Piece(i, toks, done, lps, pieces)
        if fail:
            raise fail[0]
    finally:
        channel.cancel(sid)
        worker.join()
        channel.close_stream(sid)
