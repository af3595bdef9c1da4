"""Errors a user can cause. CLIs print them as one `error: ...` line and exit 1."""


class UserError(Exception):
    """Bad input, a missing file, a mismatched checkpoint: the message says what to do."""


class ConfigError(UserError, ValueError):
    """An invalid model or run configuration value (names the field and what is allowed)."""


class CheckpointError(UserError):
    """A missing, empty, corrupt or mismatched checkpoint."""


class DataError(UserError):
    """A missing, empty or mismatched corpus or token file."""


class TokenError(UserError, ValueError):
    """Token ids that are not integers in [0, vocab_size), or tokens of the wrong shape."""


class PromptTooLongError(UserError, ValueError):
    """prompt length + max_new_tokens does not fit the model's block_size."""


class DecodeMemoryError(UserError, MemoryError):
    """The KV cache and logits of one generate() call would not fit in the memory available."""


class ScoreMemoryError(UserError, MemoryError):
    """A scoring batch (loglikelihood, token_logprobs, eval.py) that would not fit in memory."""


def is_network_error(e: BaseException) -> bool:
    """Whether e (or an exception it came from) says the network or the Hugging Face Hub could
    not be reached: the builtin ConnectionError (datasets' "Couldn't reach ...", the hub's
    OfflineModeIsEnabled), or requests' / httpx's transport errors, which do not derive from it."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        names = {c.__name__ for c in type(e).__mro__}
        if isinstance(e, ConnectionError) or names & {"ConnectionError", "Timeout",
                                                     "TransportError", "OfflineModeIsEnabled"}:
            return True
        e = e.__cause__ or e.__context__
    return False


def offline_note() -> str:
    """'; HF_HUB_OFFLINE=1 is set' where an offline switch is on (to end a parenthesis that
    gives the cause), else ''."""
    import os
    on = [k for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
          if os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")]
    return f"; {' and '.join(f'{k}=1' for k in on)} {'is' if len(on) == 1 else 'are'} set" \
        if on else ""
