"""Errors that end a run with a contract exit code.

A `UserError` is the user's to fix (exit 2, one line); anything else that
escapes is lossmap's own fault (exit 3).
"""
import re

# Everything str.splitlines() breaks a line at, and the other control characters:
# a name taken from a hostile file must not turn the one-line error into several.
_BREAKS = re.compile(r"\s*[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


def one_line(message: str) -> str:
    """`message` as one line: line breaks become spaces, other control characters are escaped."""
    text = _BREAKS.sub(" ", str(message)).strip()
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class UserError(Exception):
    """Bad input: the message is one line saying what is wrong and how to fix it (made one line here)."""

    exit_code = 2

    def __init__(self, message=""):
        super().__init__(one_line(message))


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
