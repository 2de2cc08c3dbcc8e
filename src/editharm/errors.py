"""User-facing errors: each is printed as one message by the CLI, without a traceback."""


class EditharmError(Exception):
    """Bad input or an unmet precondition, reported to the user as-is before compute starts."""


class ConfigError(EditharmError):
    """A config key, group name or value is invalid."""


class DataError(EditharmError):
    """Edit or evaluation data is missing or malformed."""


class ModelError(EditharmError):
    """A model cannot be found or loaded."""
