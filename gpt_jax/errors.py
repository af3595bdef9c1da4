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
