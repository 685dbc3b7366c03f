"""User-facing errors: one clear line, shown without a traceback."""


class UserError(Exception):
    """A problem caused by the user's input (a file, a path, an option), explained in one line."""


class ProjectError(UserError):
    """An ilastik project that cannot be opened or used."""


class DataError(UserError):
    """Image data that cannot be found, read or interpreted."""
