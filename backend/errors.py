"""User-facing errors: one clear line, shown without a traceback."""


class UserError(Exception):
    """A problem caused by the user's input (a file, a path, an option), explained in one line."""


class ProjectError(UserError):
    """An ilastik project that cannot be opened or used."""


class DataError(UserError):
    """Image data that cannot be found, read or interpreted."""


class RawDataMissing(DataError):
    """A lane's raw data file is not where the project says; ``path`` is where it was looked for."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class TransientError(RuntimeError):
    """A failure that may not happen again (a lost worker, a closed executor): retried, never cached."""

    deterministic = False


def is_deterministic(error: BaseException) -> bool:
    """Whether computing again would fail the same way (bad data, bad classifier), so the failure may be cached."""
    flag = getattr(error, "deterministic", None)
    if flag is not None:
        return bool(flag)
    return not isinstance(error, (OSError, RuntimeError, KeyError, TimeoutError, MemoryError))
