"""Errors that reach the user as one line and an exit code (DESIGN §7)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3


class LandscapeError(Exception):
    """Bad input: usage, config, checkpoint, data, or a loss that is not finite (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(LandscapeError):
    """A config file or key is wrong; the message names the file and the key."""

    def __init__(self, source: str, key: str | None, message: str):
        self.source, self.key = source, key
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class CheckpointError(LandscapeError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model."""


class DataError(LandscapeError):
    """The data cannot be loaded or is empty."""


class NumericalError(LandscapeError):
    """The loss, gradient or a Hessian-vector product is not finite."""
