"""Exception types shown to users.

Every error a user can cause (bad file, bad config, bad id) is a ``PldaError``. The CLI prints
its message without a traceback and exits with status 2, so the message must name the file,
field or value and say what was expected.
"""


class PldaError(Exception):
    """Base class for user-facing errors."""


class ConfigError(PldaError, ValueError):
    """A configuration key, value or preset is invalid."""


class DataError(PldaError, ValueError):
    """A dataset file, folder, id or label is missing or malformed."""


class WeightsError(PldaError, ValueError):
    """A weights or checkpoint file is unreadable, foreign or does not fit the model."""
