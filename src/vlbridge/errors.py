"""Exception types that mean "the user gave something wrong".

The CLI turns a `UserError` into one line on stderr and a non-zero exit code, never a
traceback. Library code raises it (or a subclass) for anything a user can fix: a missing
file, a bad format, an unknown encoder name, a missing embedded asset. Programming errors
stay ordinary exceptions so their tracebacks are kept.
"""


class UserError(Exception):
    """Something the user supplied is wrong or missing; the message says what and how to fix it."""


class AssetMissingError(UserError):
    """An embedded asset (installed by `make setup`) is not present on this machine."""


class BadInputError(UserError):
    """A file given on the command line is unreadable or has the wrong format."""


class TrainingInterrupted(UserError):
    """A run stopped by a signal after saving a checkpoint; `exit_code` is 128 + the signal number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code  # what the CLI exits with (143 for SIGTERM, 130 for Ctrl-C)


def one_line(err: BaseException, limit: int = 160) -> str:
    """`err`'s message on one line (whitespace runs folded), cut to `limit` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
