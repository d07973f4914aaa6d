"""The one error type a user sees: `UserError`, printed by the CLI as one `error:` line, exit status 2.

Each subclass names where the problem was found; all of them mean "the input is wrong, here is
how to fix it", never "the program is broken". Programming errors stay ordinary exceptions and
keep their tracebacks.
"""
from __future__ import annotations

USAGE_ERRORS = 2  # the exit status of a UserError; launchers read it as "the input, not the job, was wrong"


class UserError(Exception):
    """A problem the user can fix. Its message is one line that names the problem and the fix."""


class ConfigError(UserError, ValueError):
    """A bad recipe, override or command-line argument."""


class DataError(UserError):
    """A dataset that is missing, malformed or does not fit the recipe."""


class TeacherError(UserError):
    """A teacher that cannot be built or loaded."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or written."""


class DivergenceError(UserError):
    """The loss became non-finite."""


class CacheError(UserError):
    """Cached teacher logits that do not match the live teacher."""


class OutOfSpaceError(UserError):
    """A write failed because its filesystem is full (or the user's quota is spent)."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type's name if it has none): what a
    one-line `error:` can quote of a library's multi-line error."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
