"""Where a finding points in the repository: the user's code behind its term, else the model file.

A term from custom training code carries `source: {file, line, function}`; a
user-defined loss, regularizer or layer carries `origin: {file, line, ...}`; a
lock change points at its term's line in the lock file; anything else points
at the model: the archive, or the factory's `def` line. Paths are relative to
the working directory (GitHub resolves them against the repository root);
`inside` is False for a file outside it (a package's own file, say).
"""
from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass
from typing import Optional
from urllib.parse import quote


@dataclass(frozen=True)
class Location:
    path: str  # relative to the working directory when inside it, else absolute
    line: Optional[int]
    inside: bool

    @property
    def uri(self) -> str:
        """A URI reference: relative (to the working directory) when inside it, else a file URI."""
        if self.inside:
            return quote(self.path)
        return "file://" + quote(os.path.abspath(self.path).replace(os.sep, "/"))


def locate(doc: dict, finding: dict, lock=None, cwd: Optional[str] = None) -> Optional[Location]:
    """The location of `finding` (a dict of `doc["findings"]`); None when there is no file at all."""
    terms = {t["id"]: t for t in doc["terms"]}
    term = terms.get(finding.get("term") or "")
    if term is not None:
        for key in ("source", "origin"):
            where = term.get(key)
            if isinstance(where, dict) and where.get("file") and os.path.exists(where["file"]):
                return _location(where["file"], where.get("line"), cwd)
    if lock is not None and finding["code"].startswith("LOCK_"):
        line = lock.lines.get(finding.get("term"))
        if line or finding.get("term") is None:  # a term the lock file does not have points at the model
            return _location(lock.path, line, cwd)
    return model_location(doc["model"]["source"], cwd)


def model_location(source: str, cwd: Optional[str] = None) -> Optional[Location]:
    """The model's file: an archive, a factory file at its function's line, a factory module's file."""
    if os.path.exists(source):
        return _location(source, None, cwd)
    left, sep, fn = source.rpartition(":")
    if not sep:
        return None
    path = left if os.path.exists(left) else _module_file(left)
    if not path:
        return None
    return _location(path, def_line(path, fn), cwd)


def _module_file(name: str) -> Optional[str]:
    module = sys.modules.get(name)  # loading the model imported it already
    path = getattr(module, "__file__", None)
    return path if path and os.path.exists(path) else None


def def_line(path: str, name: str) -> Optional[int]:
    """The line of `def name` (or `Class.method`) in a Python file, read with ast; None if not found."""
    try:
        with open(path, encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    body = tree.body
    node = None
    for part in name.split("."):
        node = next((n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node.lineno


def _location(path: str, line, cwd: Optional[str]) -> Location:
    base = os.path.abspath(cwd or os.getcwd())
    full = os.path.abspath(path)
    rel = os.path.relpath(full, base)
    inside = not rel.startswith(os.pardir) and not os.path.isabs(rel)
    shown = rel.replace(os.sep, "/") if inside else full
    return Location(shown, int(line) if isinstance(line, int) and line > 0 else None, inside)
