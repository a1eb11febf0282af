"""Errors that end a run with a contract exit code.

A `UserError` is the user's to fix (exit 2, one line); anything else that
escapes is lossmap's own fault (exit 3).
"""


class UserError(Exception):
    """Bad input: the message is one line saying what is wrong and how to fix it."""

    exit_code = 2


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
