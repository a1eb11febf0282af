"""Errors that end a run with a contract exit code.

A `UserError` is the user's to fix (exit 2, one line); anything else that
escapes is lossmap's own fault (exit 3).
"""
import re

# Everything str.splitlines() breaks a line at, and the other control characters:
# a name taken from a hostile file must not turn the one-line error into several.
_BREAKS = re.compile(r"\s*[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]+\s*")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")


# A message longer than this (a name of 100,000 characters from a hostile file) keeps its start
# and its end, where it says how to fix it.
MAX_MESSAGE = 1000


def one_line(message: str) -> str:
    """`message` as one line: line breaks become spaces, other control characters are escaped,
    and the middle of a very long one is left out."""
    text = _BREAKS.sub(" ", str(message)).strip()
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > MAX_MESSAGE:
        text = f"{text[:600]} ... {text[-(MAX_MESSAGE - 605):]}"
    return text


class UserError(Exception):
    """Bad input: the message is one line saying what is wrong and how to fix it (made one line here)."""

    exit_code = 2

    def __init__(self, message=""):
        super().__init__(one_line(message))


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
