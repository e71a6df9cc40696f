"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""

from __future__ import annotations


class MeddenoiseError(Exception):
    """An error whose message tells the user what went wrong and what to do next.

    `parameter` names the config field at fault in library terms (`epochs`, `noise.std`); the CLI adds the
    matching command-line flag to the message, so library code never needs to know how a value was given.
    """

    def __init__(self, *args: object, parameter: str | None = None) -> None:
        super().__init__(*args)
        self.parameter = parameter


class ConfigError(MeddenoiseError):
    """A bad option value, an unknown config key or an unreadable config file (`parameter`: the field)."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(message, parameter=parameter)


class DataError(MeddenoiseError):
    """Missing, corrupt or inconsistent input data (the message names the file)."""


class DiskFullError(MeddenoiseError):
    """Not enough free space (or a write the file system refused) in an output folder, named in the text."""


class HostMemoryError(MeddenoiseError):
    """Host memory (or address space) ran out, e.g. mapping or copying a prepared folder's images."""
