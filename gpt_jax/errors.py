"""Errors a user can cause. CLIs print them as one `error: ...` line and exit 1."""


class UserError(Exception):
    """Bad input, a missing file, a mismatched checkpoint: the message says what to do."""


class ConfigError(UserError, ValueError):
    """An invalid model or run configuration value (names the field and what is allowed)."""


class CheckpointError(UserError):
    """A missing, empty, corrupt or mismatched checkpoint."""


class DataError(UserError):
    """A missing, empty or mismatched corpus or token file."""
