"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class MeddenoiseError(Exception):
    """An error whose message tells the user what went wrong and what to do next."""


class ConfigError(MeddenoiseError):
    """A bad option value, an unknown config key or an unreadable config file."""


class DataError(MeddenoiseError):
    """Missing, corrupt or inconsistent input data (the message names the file)."""
