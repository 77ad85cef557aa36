"""Exceptions that the CLI turns into a clear one-line message (exit code 2)."""


class BornfieldError(Exception):
    """Base class: bad input that the user can fix."""


class ConfigError(BornfieldError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class InputFileError(BornfieldError, ValueError):
    """A file (structure, QE output, model, checkpoint) is missing, truncated or malformed.

    The message names the file and what is wrong with it.
    """
