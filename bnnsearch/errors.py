"""User-facing errors.

A :class:`UserError` is a mistake in the user's input (a config key, a flag, a missing dataset
file). The CLI prints its message on one line and exits with code 2, without a traceback.
Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input; the message names the file/key or flag."""


def named(path: str, e: UserError) -> UserError:
    """``e`` with the file it came from in front (a dataset missing for a config file's ``data``
    names the dataset, not the file), unless its message names the file already."""
    return e if str(e).startswith(f"{path}:") else UserError(f"{path}: {e}")


class ConfigError(UserError):
    """An invalid configuration value or key."""

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class Interrupted(Exception):
    """A study or comparison stopped by the user (SIGINT) before it finished. Its records are
    marked interrupted (never FINISHED, no best config); ``--resume`` completes what is missing.
    ``name`` is the study or comparison name the resume command needs."""

    def __init__(self, message: str, name: str):
        self.name = name
        super().__init__(message)
