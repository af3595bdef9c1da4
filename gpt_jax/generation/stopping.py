"""Stop strings: matched on the decoded bytes across token boundaries, inside the decode loop.

transformers' StopStringCriteria, ported: for every token and stop string the host precomputes
where the token can sit inside the stop string (its valid positions, counted from the stop's
end) and how much of the stop's end it can hold when it is the newest token (its end lengths,
the token may run past the stop's end); in the loop, a row's last M tokens (M = the longest
stop in bytes: one token holds at least one byte) are looked up in those tables and a running
sum of token lengths says whether a chain of valid placements covers the whole stop, ending in
the newest token. No decoding inside the loop, no Python per step.

Differences from transformers: the tables are built from each token's bytes (tiktoken's
decode_single_token_bytes), not from a cleaned-up string, so a stop with non-ASCII characters
matches across tokens that split a character; and the check may skip the prompt
(stop_in_prompt=False: what lm-eval's generate_until does) or, by default as in transformers,
see the prompt's last tokens too, so a stop that begins in the prompt and ends in the first
new token stops.

cut_text and StopTextStream are the host side: the text of a row cut before the first stop
(as lm-eval's `until` and OpenAI's `stop` do), and the same cut applied to a stream of token
bytes, holding back only what may still turn out to be the start of a stop.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax.numpy as jnp
import numpy as np

import gpt_jax.generation.memory as memory
from gpt_jax.errors import DecodeMemoryError, UserError


def check_stop(stop) -> tuple[str, ...]:
    """stop (None, a string, or a list of strings) as a tuple of non-empty strings."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise UserError(f"stop must be a string or a list of strings, got {stop!r}")
    if any(s == "" for s in stop):
        raise UserError("stop strings must not be empty (an empty stop would end every row at "
                        "once): drop the empty string")
    for s in stop:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:   # a lone surrogate: a non-UTF-8 byte kept by Python
            raise UserError(f"stop string {s[:40]!r} is not valid text: it holds {s[e.start]!r} "
                            f"at character {e.start}, a lone surrogate (a byte that was not "
                            f"UTF-8, as from a command line): pass UTF-8 text") from None
    return tuple(dict.fromkeys(stop))  # order kept, duplicates dropped


class StopTables(NamedTuple):
    """The lookup tables of one set of stop strings over one vocabulary (V rows, plus a last
    sentinel row for "no token": padding, or the prompt when it is not searched).
    positions int32 (V+1, S, P): where each token may sit inside each stop (-1: none);
    ends int32 (V+1, S, E): how many of the stop's last bytes it may hold as the newest token
    (-1: none); lengths int32 (V+1,) its length in bytes; targets int32 (S,) stop lengths."""
    positions: np.ndarray
    ends: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray

    @property
    def window(self) -> int:
        """Tokens a match can span: one per byte of the longest stop."""
        return int(self.targets.max())


def token_bytes(enc, vocab_size: int) -> list[bytes]:
    """Each id's bytes under the tokenizer (b"" for ids it does not have, e.g. padded ones)."""
    out = []
    for t in range(vocab_size):
        try:
            out.append(enc.decode_single_token_bytes(t))
        except KeyError:
            out.append(b"")
    return out


@functools.lru_cache(maxsize=8)
def stop_tables(stops: tuple[str, ...], enc, vocab_size: int) -> StopTables:
    """StopTables for `stops` (non-empty, as check_stop returns them) over ids [0, vocab_size)
    of the tokenizer enc (cached: the scan over the vocabulary takes a fraction of a second).

    A long stop is a large table: a token has one entry per place it fits in the stop (the
    space token in English text: every word), and a 100,000-character stop asked for 18.7 GiB.
    Tables that, with one row's matching in the loop (memory.stop_match_bytes), would not fit
    in the memory available are refused (DecodeMemoryError, naming the longest stop that fits
    whatever its text) before they are allocated; the scan stops as soon as one token's places
    pass what would fit. generate() checks the batch's matching with the KV cache."""
    toks = _vocab_bytes(enc, vocab_size)
    targets = [s.encode("utf-8") for s in stops]
    M, S = max(map(len, targets)), len(stops)
    widest = min(M, max(map(len, toks)))      # no token holds more ends than this
    limit, budget, free = None, None, None    # most places per token that fit; bytes free
    if _need(vocab_size, S, M, M - 1, widest) >= memory.MEMORY_CHECK_ABOVE:
        free = memory.available_memory_bytes()
        budget = None if free is None else int(memory.MEMORY_FRACTION * free)
        if budget is not None and _need(vocab_size, S, M, M - 1, widest) > budget:
            fixed = _need(vocab_size, S, M, 0, widest)
            limit = max((budget - fixed) // (_need(vocab_size, S, M, 1, widest) - fixed), 0)
    pos: list[dict] = []
    ends: list[dict] = []
    for k, stop in enumerate(targets):
        p, e = _placements(stop, toks, limit)
        if p is None:
            _refuse(stops[k], M, limit + 1, widest, vocab_size, S, free, budget, more=True)
        if not e:
            raise UserError(f"no token of the vocabulary can end the stop string {stops[k]!r}")
        pos.append(p)
        ends.append(e)
    P = max([len(v) for p in pos for v in p.values()] or [1])
    E = max(len(v) for e in ends for v in e.values())
    if budget is not None and _need(vocab_size, S, M, P, E) > budget:
        k = max(range(S), key=lambda k: max(map(len, pos[k].values()), default=0))
        _refuse(stops[k], M, P, E, vocab_size, S, free, budget)
    positions = np.full((vocab_size + 1, S, P), -1, np.int32)
    end_lens = np.full((vocab_size + 1, S, E), -1, np.int32)
    for s in range(S):
        for t, v in pos[s].items():
            positions[t, s, :len(v)] = v
        for t, v in ends[s].items():
            end_lens[t, s, :len(v)] = v
    lengths = np.array([len(t) for t in toks] + [0], np.int32)
    return StopTables(positions, end_lens, lengths, np.array([len(t) for t in targets], np.int32))


def _need(vocab_size: int, n_stops: int, window: int, places: int, ends: int) -> int:
    """Bytes of the tables and of one row's matching (see memory.stop_*_bytes)."""
    return memory.stop_table_bytes(vocab_size, n_stops, places, ends) + \
        memory.stop_match_bytes(window, n_stops, places, ends)


def _placements(stop: bytes, toks: list[bytes], limit: Optional[int]):
    """({token: places inside stop}, {token: end lengths}) for one stop (see StopTables), or
    (None, None) once a token has more than `limit` places. A place i counts the bytes from
    the token's end to the stop's end: the token's bytes equal the stop's there, or, where the
    token runs past the stop's start, its end equals the stop's start."""
    rstop, n = stop[::-1], len(stop)
    p, e = {}, {}
    last, chars = stop[-1:], set(stop)
    for t, tok in enumerate(toks):
        if not tok or (tok[-1] not in chars and last not in tok):
            continue              # shares no byte that could place it: no match possible
        rtok, L = tok[::-1], len(tok)
        found = []                # internal: the token ends i bytes before the stop's end
        i = rstop.find(rtok, 1)   # wholly inside the stop: a search in C
        while i >= 0:
            found.append(i)
            if limit is not None and len(found) > limit:
                return None, None
            i = rstop.find(rtok, i + 1)
        found += [i for i in range(max(1, n - L + 1), n) if rtok.startswith(rstop[i:])]
        if found:
            p[t] = found
        found = []                # newest token: the stop's end at byte i of the token
        i = tok.find(last)
        while i >= 0:
            overlap = min(i + 1, n)
            if tok[i + 1 - overlap:i + 1] == stop[-overlap:]:
                found.append(overlap)
            i = tok.find(last, i + 1)
        if found:
            e[t] = found
    return p, e


def _refuse(stop: str, window: int, places: int, ends: int, vocab_size: int, n_stops: int,
            free: int, budget: int, more: bool = False) -> None:
    """The DecodeMemoryError of tables that do not fit: what the stop needs, and the longest
    stop that fits whatever its text (a place per byte, the widest ends). more: the scan
    stopped at `places`, which the stop has more of."""
    def fits(n):   # a stop of n bytes, any text
        return _need(vocab_size, n_stops, n, n - 1, min(n, ends)) <= budget
    lo, hi = 0, window         # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    shown = repr(stop[:20]) + ("..." if len(stop) > 20 else "")
    todo = (f"use stop strings of at most {lo:,} bytes (any text that long fits)" if lo >= 1
            else "free some memory")
    raise DecodeMemoryError(
        f"the stop string {shown} ({len(stop.encode('utf-8')):,} bytes) needs at least "
        f"{memory.format_gib(_need(vocab_size, n_stops, window, places, ends))} for its tables "
        f"and matching (a token fits at {places:,}{' or more' if more else ''} places in it) "
        f"but "
        f"{memory.format_gib(free)} is available (at most {memory.MEMORY_FRACTION:.0%} of it is "
        f"used): {todo}")


_VOCAB: dict = {}


def _vocab_bytes(enc, vocab_size: int) -> list[bytes]:
    key = (id(enc), vocab_size)
    if key not in _VOCAB:
        _VOCAB[key] = token_bytes(enc, vocab_size)
    return _VOCAB[key]


def stop_matched(tables, tail):
    """bool (B,): whether a stop string ends in the newest token of each row.
    tables: StopTables as arrays; tail int32 (B, M), each row's last M = tables.window tokens,
    oldest first (the sentinel id V for none). transformers' StopStringCriteria.__call__."""
    positions, ends, lengths, targets = tables
    ids = tail[:, ::-1]                                          # (B, M), newest first
    end = ends[ids[:, 0]][:, None]                               # (B, 1, S, E)
    valid = positions[ids[:, 1:]]                                # (B, M-1, S, P)
    lens = jnp.broadcast_to(lengths[ids[:, 1:]][:, :, None, None],
                            ids[:, 1:].shape + end.shape[2:])    # (B, M-1, S, E)
    cum = jnp.cumsum(jnp.concatenate([end, lens], axis=1), axis=1)   # (B, M, S, E)
    # the newest token must hold the stop's end; each older one must sit where the bytes
    # matched so far put it
    later = jnp.any(cum[:, :-1, :, None, :] == valid[..., None], axis=-2)   # (B, M-1, S, E)
    match = jnp.concatenate([end > 0, later], axis=1)
    unbroken = jnp.cumsum(~match, axis=1) == 0
    reached = jnp.max(jnp.where(unbroken, cum, 0), axis=(1, 3))  # (B, S) bytes matched
    return jnp.any(reached >= targets[None, :], axis=-1)


def push(tail, new):
    """The window moved on by one token: (B, M) tail, (B,) new -> (B, M)."""
    return jnp.concatenate([tail[:, 1:], new[:, None].astype(tail.dtype)], axis=1)


def initial_tail(tokens, pad, window: int, sentinel: int, include_prompt):
    """(B, M) the window before the first new token: the prompt's last tokens where
    include_prompt (a bool, may be traced), else sentinels; padding is always a sentinel.
    tokens (B, P) left-padded prompts, pad (B,)."""
    B, P = tokens.shape
    if window > P:
        tokens = jnp.pad(tokens, ((0, 0), (window - P, 0)))
        pad = pad + (window - P)
        P = window
    idx = jnp.arange(P - window, P)
    real = (idx[None, :] >= pad[:, None]) & include_prompt
    return jnp.where(real, tokens[:, P - window:], sentinel).astype(jnp.int32)


# -- the host side: text -----------------------------------------------------------------------

def cut_text(text: str, stops: Sequence[str]) -> str:
    """text up to (not including) the first occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


class StopTextStream:
    """Token bytes in, text out as it becomes safe to show: whole UTF-8 characters only, cut
    before the first stop, and holding back any end of the text that is the start of a stop.
    The pieces joined equal cut_text(decoded text, stops)."""

    def __init__(self, stops: Sequence[str] = ()):
        self.stops = tuple(stops)
        self.raw = b""         # all bytes so far
        self.shown = 0         # characters of the decoded text already returned
        self.stopped = False

    def feed(self, data: bytes) -> str:
        if self.stopped:
            return ""
        self.raw += data
        text = self.raw[:_complete_prefix(self.raw)].decode("utf-8", errors="replace")
        cut = cut_text(text, self.stops)
        if len(cut) < len(text):
            self.stopped = True
            return self._take(cut)
        hold = max((k for s in self.stops for k in range(1, min(len(s), len(text)) + 1)
                    if text.endswith(s[:k])), default=0)
        return self._take(text[:len(text) - hold])

    def finish(self) -> str:
        """What is left at the end (a held-back partial stop that never completed)."""
        if self.stopped:
            return ""
        self.stopped = True
        return self._take(cut_text(self.raw.decode("utf-8", errors="replace"), self.stops))

    def _take(self, text: str) -> str:
        piece = text[self.shown:]
        self.shown = max(self.shown, len(text))
        return piece


def _complete_prefix(raw: bytes) -> int:
    """Length of raw without a trailing, incomplete UTF-8 character."""
    for back in range(1, min(4, len(raw)) + 1):
        b = raw[-back]
        if b < 0x80:
            return len(raw)
        if b >= 0xC0:          # a lead byte: is its character complete?
            need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            return len(raw) if back >= need else len(raw) - back
    return len(raw)


def as_arrays(tables: Optional[StopTables]):
    """The tables as jax arrays, for the decode function's arguments (None stays None)."""
    return None if tables is None else StopTables(*(jnp.asarray(x) for x in tables))
