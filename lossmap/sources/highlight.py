"""Statements found by libcst matchers in one definition, and its lines with those highlighted.

A statement that is not found is reported (`Step.found=False`, `missing`
naming it) instead of showing wrong lines.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from lossmap.sources.index import NotFound, SourceFile, definition, display_path, module_file, source_file

Note = Any  # str | None | Callable[[Analysis], Optional[str]]


@dataclass
class SourceLine:
    number: int  # real line number in the file
    text: str  # the line, without its newline
    highlight: bool
    note: Optional[str] = None
    terms: list = field(default_factory=list)  # ids of the terms this line makes (the user's own step)


@dataclass
class Step:
    """One function of the library that builds this model's total, with its lines."""

    key: str
    title: str
    explanation: str
    file: Optional[str]  # absolute path; None when the module itself was not found
    display_path: Optional[str]  # e.g. "keras/src/trainers/trainer.py"
    qualname: str
    start_line: Optional[int]  # first line (decorators included); None when not found
    end_line: Optional[int]
    lines: list = field(default_factory=list)  # [SourceLine]; empty when found is False
    found: bool = True
    missing: Optional[str] = None  # which anchor or statement was not found, in words


@dataclass(frozen=True)
class Stmt:
    """A statement to highlight: every statement containing a node that `matcher` matches.

    `within`: only matches inside a node matching this matcher count (e.g. one
    loop of two similar ones). `when(analysis)`: highlight only if true.
    `label`: how the statement reads, for the "not found" message.
    """

    matcher: Any
    note: Note = None
    label: Optional[str] = None
    within: Any = None
    when: Optional[Callable] = None


def as_stmt(spec) -> Stmt:
    """A `Stmt` from a `Stmt` or the shorthand `(matcher, note[, label])`."""
    if isinstance(spec, Stmt):
        return spec
    if isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 3:
        return Stmt(*spec)
    raise TypeError(f"a statement spec is Stmt or (matcher, note[, label]), not {spec!r}")


def source_lines(src: SourceFile, start: int, end: int, marks: dict) -> list:
    """[SourceLine] of lines `start`..`end`, highlighted and noted as `marks` says."""
    out = []
    for n in range(start, end + 1):
        hl, note = marks.get(n, (False, None))
        out.append(SourceLine(n, src.lines[n - 1] if n - 1 < len(src.lines) else "", hl, note))
    return out


def mark(marks: dict, ranges, note: Optional[str]):
    """Highlight every line of `ranges`; `note` goes on the first line, after any note already there."""
    first = True
    for a, b in ranges:
        for n in range(a, b + 1):
            hl, old = marks.get(n, (False, None))
            if first and note:
                old = f"{old}; {note}" if old else note
                first = False
            marks[n] = (True, old)


def _label(stmt: Stmt) -> str:
    if stmt.label:
        return stmt.label
    text = repr(stmt.matcher)
    return text if len(text) <= 120 else text[:117] + "..."


def locate_in_file(path: str, qualname: str, statements: Sequence = (), *, key: str = "",
                   title: str = "", explanation: str = "", line_hint: Optional[int] = None) -> Step:
    """`locate` for a file path instead of a module name."""
    title = title or qualname
    shown = display_path(path)
    try:
        d = definition(path, qualname, line_hint)
    except NotFound as exc:
        return Step(key, title, explanation, path, shown, qualname, None, None, [], False,
                    f"anchor {qualname} not found in {shown}: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        return Step(key, title, explanation, path, shown, qualname, None, None, [], False,
                    f"anchor {qualname}: {shown} could not be read ({exc})")
    marks, missing = {}, []
    for spec in statements:
        stmt = as_stmt(spec)
        ranges = d.find(stmt.matcher, stmt.within)
        if not ranges:
            missing.append(_label(stmt))
            continue
        mark(marks, ranges, stmt.note)
    start, end = d.start_line, d.end_line
    if missing:
        what = "; ".join(f"`{s}`" for s in missing)
        return Step(key, title, explanation, path, shown, qualname, start, end, [], False,
                    f"in {qualname} ({shown}, lines {start}-{end}) the statement(s) {what} were not found")
    return Step(key, title, explanation, path, shown, qualname, start, end,
                source_lines(source_file(path), start, end, marks), True, None)


def locate(module: str, qualname: str, statements: Sequence = (), *, key: str = "", title: str = "",
           explanation: str = "") -> Step:
    """Find `qualname` in the installed `module` and highlight `statements` (see `Stmt`).

    Returns a `Step`; when the module, the function or any statement is not
    found, `found` is False, `lines` is empty and `missing` says which.
    """
    try:
        path = module_file(module)
    except NotFound as exc:
        return Step(key, title or qualname, explanation, None, None, qualname, None, None, [], False,
                    f"anchor {module}.{qualname}: {exc}")
    return locate_in_file(path, qualname, statements, key=key, title=title, explanation=explanation)
