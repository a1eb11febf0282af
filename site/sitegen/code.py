"""Source code on the pages: included from the file that ran, never retyped, with true line numbers.

`source_of(obj, marks)` shows a function or class of an example module; `library_window(path,
line)` a few lines of an installed library around a cited line; `step_rows(view)` re-uses
lossmap's own walkthrough views (`lossmap.render.html.context`). Every block is rows in the shape
lossmap's `code.html.j2` prints: number, highlighted HTML, highlight flag, note.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Optional

from lossmap.render.html import highlight_lines
from lossmap.sources import display_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class CodeChanged(LookupError):
    """A line a page points at is no longer in the source it includes."""


@dataclass
class CodeBlock:
    path: str  # as shown: repository-relative for this project, package-relative for libraries
    qualname: str
    start: int
    end: int
    rows: list = field(default_factory=list)
    marked: dict = field(default_factory=dict)  # substring -> line number it was found on

    def line_of(self, substring: str) -> int:
        return self.marked[substring]

    def find(self, substring: str, highlighted: bool = False) -> int:
        """The number of the first shown line containing `substring` (only highlighted ones if asked)."""
        for r in self.rows:
            if not r["fold"] and (r["highlight"] or not highlighted) and substring in _plain(r):
                return r["number"]
        raise CodeChanged(f"{self.qualname} in {self.path} shows no {'highlighted ' if highlighted else ''}"
                          f"line with {substring!r}")

    def note(self, substring: str) -> str:
        """The note lossmap wrote on the first highlighted line containing `substring`."""
        line = self.find(substring, highlighted=True)
        return next(r["note"] or "" for r in self.rows if not r["fold"] and r["number"] == line)


def shown_path(path: str) -> str:
    path = os.path.abspath(path)
    if path.startswith(REPO + os.sep):
        return os.path.relpath(path, REPO).replace(os.sep, "/")
    return display_path(path)


def _rows(texts: list, first: int, marks: dict) -> tuple:
    """Rows for `texts` (file lines from `first`); each mark (substring -> note) highlights the first line with it."""
    htmls = highlight_lines([{"text": t} for t in texts])
    found = {}
    for sub in marks:
        for i, text in enumerate(texts):
            if sub in text:
                found[sub] = first + i
                break
        else:
            raise CodeChanged(f"no line contains {sub!r}")
    notes = {}
    for sub, line in found.items():
        if marks[sub]:
            notes[line] = "; ".join(x for x in (notes.get(line), marks[sub]) if x)
        else:
            notes.setdefault(line, None)
    rows = [{"fold": None, "number": first + i, "html": htmls[i], "highlight": (first + i) in notes,
             "note": notes.get(first + i), "terms": []} for i in range(len(texts))]
    return rows, found


def source_of(obj, marks: Optional[dict] = None, qualname: Optional[str] = None) -> CodeBlock:
    """A function or class as it is in its file: `marks` maps a substring of a line to its note."""
    lines, start = inspect.getsourcelines(obj)
    texts = [line.rstrip("\n") for line in lines]
    rows, found = _rows(texts, start, marks or {})
    path = inspect.getsourcefile(obj)
    return CodeBlock(shown_path(path), qualname or obj.__qualname__, start, start + len(texts) - 1, rows, found)


def file_lines(path: str, start: int, end: int, marks: Optional[dict] = None, qualname: str = "") -> CodeBlock:
    """Lines `start`..`end` of a file as they are."""
    with open(path, encoding="utf-8") as fh:
        texts = fh.read().splitlines()[start - 1:end]
    rows, found = _rows(texts, start, marks or {})
    return CodeBlock(shown_path(path), qualname, start, start + len(texts) - 1, rows, found)


def library_window(cite: dict, before: int = 4, after: int = 3) -> CodeBlock:
    """The lines around a statement lossmap cites (`lossmap.engine_diff.cite`), read from the installed file,
    within the function it is in."""
    from lossmap.sources import definition, module_file

    path = module_file(cite["module"])
    line = cite["line"]
    d = definition(path, cite["qualname"])
    first, last = max(d.start_line, line - before), min(d.end_line, line + after)
    block = file_lines(path, first, last, qualname=cite["qualname"])
    row = next(r for r in block.rows if r["number"] == line)
    if cite["text"] and cite["text"] not in _plain(row):
        raise CodeChanged(f"{block.path}:{line} is not {cite['text']!r}")
    row["highlight"] = True
    return block


def _plain(row) -> str:
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", row["html"]))


def step_block(view: dict, report_href: str = "") -> CodeBlock:
    """A step of lossmap's walkthrough (a view from `lossmap.render.html.context`) as a code block.

    Term links in the notes point into the full report at `report_href`."""
    rows = []
    for r in view["lines"]:
        r = dict(r)
        r["terms"] = [dict(t, href=f"{report_href}#{t['anchor']}") for t in r.get("terms") or []]
        rows.append(r)
    numbers = [r["number"] for r in rows if not r["fold"]] + [r["last"] for r in rows if r["fold"]]
    start = view.get("start") or min(numbers)
    return CodeBlock(view["path"], view["qualname"], min(start, min(numbers)), view.get("end") or max(numbers), rows)


def highlighted_texts(block: CodeBlock) -> list:
    """(line number, plain text, note) of every highlighted row."""
    return [(r["number"], _plain(r), r["note"]) for r in block.rows if not r["fold"] and r["highlight"]]
