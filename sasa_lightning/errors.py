"""The errors a person running `sasa` can fix: the CLI prints them as one line, without a traceback.

Anything else that goes wrong is a bug, in this package or a library, and keeps its traceback.
"""


class UserError(Exception):
    """What was given (data, a checkpoint, a config value, an output path) cannot be used; the
    message says what is wrong and what would be right."""


class ConfigError(UserError, ValueError):
    """An option or config value that is out of range or unknown."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used, with what would be right."""
