"""Exception hierarchy. The CLI turns a RecStudioError into one clear line and exit code 2.

Raise the most specific class with a message that names the culprit (key, value, file and line)
and, where possible, what would be accepted instead.
"""

from __future__ import annotations


class RecStudioError(Exception):
    """Root of all errors caused by user input or environment (not by bugs)."""

    exit_code = 2


class ConfigError(RecStudioError):
    """A config key is unknown, a value has the wrong type, or a value is out of range."""


class DataError(RecStudioError):
    """A dataset is unknown, a file is missing or malformed, or filtering left nothing."""


class ModelError(RecStudioError):
    """A model is unknown or cannot be built from its config."""


class TrackingError(RecStudioError):
    """The MLflow tracking store cannot be reached or written."""


class TrainingError(RecStudioError):
    """Training failed for a reason worth one line (NaN or infinite loss, out of memory)."""

    exit_code = 1


class NonFiniteLossError(TrainingError):
    """Training produced a NaN or infinite loss; the run (or trial) fails with this reason."""
