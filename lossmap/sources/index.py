"""The source index: files read once, definitions found by structure, parsed with real line numbers.

    >>> import inspect, libcst as cst, libcst.matchers as m
    >>> from lossmap.sources import index
    >>> d = index.definition(index.__file__, "ast_chain")              # a path and a qualified name
    >>> d.start_line == inspect.getsourcelines(index.ast_chain)[1]     # true file lines
    True
    >>> raises = d.findall(m.Raise())                                   # libcst matchers
    >>> [d.start_line < d.line_range(r)[0] < d.end_line for r in raises]
    [True, True]

Facts about a definition are gathered the way LibCST's codemods gather them: a
read-only visitor (`cst.CSTVisitor`) keeps what it saw in attributes, and
`Definition.line_range` gives the file lines of any node it visits (the
`PositionProvider` metadata is resolved here already, offset included):

    >>> class GatherReturns(cst.CSTVisitor):
    ...     def __init__(self, d):
    ...         self.d, self.lines = d, []
    ...     def visit_Return(self, node):
    ...         self.lines.append(self.d.line_range(node)[0])
    >>> d.gather(GatherReturns(d)).lines == [d.end_line]
    True

Cost: libcst with position metadata over a whole Keras module takes 0.1-0.9 s
per file. So each file is read and indexed once per process with Python's
`ast` (C speed) only to learn where each definition starts and ends; that
definition's own text (verbatim, real line numbers kept by an offset) is then
parsed with libcst + `PositionProvider`, and the structure is checked again
there (ClassDef -> FunctionDef). If that short parse fails for any reason, the
whole file is parsed with libcst and searched structurally (`_FULL_PARSE`
forces that path; the tests check both give the same lines).
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import gc
import importlib.util
import os
import sys
import tokenize
from dataclasses import dataclass
from typing import Optional

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, PositionProvider


class NotFound(LookupError):
    """An anchor, a definition or a statement is not where the spec says."""


# ---------------------------------------------------------------- paths

def display_path(path: Optional[str]) -> Optional[str]:
    """site-packages paths from the package on ("keras/src/trainers/trainer.py"), else relative to cwd."""
    if not path:
        return path
    norm = path.replace(os.sep, "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        i = norm.rfind(marker)
        if i >= 0:
            return norm[i + len(marker):]
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return norm
    return norm if rel.startswith("..") else rel.replace(os.sep, "/")


def module_file(module: str) -> str:
    """The source file of an importable module, without executing it when it is not imported yet."""
    mod = sys.modules.get(module)
    path = getattr(mod, "__file__", None) if mod is not None else None
    if path is None:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            raise NotFound(f"module {module} cannot be found ({exc})") from exc
        if spec is None or not spec.origin:
            raise NotFound(f"module {module} is not installed")
        path = spec.origin
    if path.endswith((".pyc", ".pyo")):
        path = importlib.util.source_from_cache(path) if "__pycache__" in path else path[:-1]
    if not path.endswith(".py") or not os.path.isfile(path):
        raise NotFound(f"module {module} has no Python source file ({path})")
    return path


@contextlib.contextmanager
def no_gc_pauses():
    """Parsing allocates many small objects; with TensorFlow loaded, the full collections they
    trigger cost about half a second each. They wait until the stage is over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# ---------------------------------------------------------------- reading and indexing files

@dataclass
class SourceFile:
    path: str
    text: str
    lines: list  # without newlines; lines[i] is line i + 1
    tree: ast.Module


def _file_key(path: str):
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def source_file(path: str) -> SourceFile:
    """The file read and parsed with `ast`, once per file version."""
    return _source_cached(_file_key(path))


@functools.lru_cache(maxsize=256)
def _source_cached(key) -> SourceFile:
    path = key[0]
    with tokenize.open(path) as fh:  # honours a coding cookie
        text = fh.read()
    # text mode: every line ending is "\n" here; str.splitlines would also split on \f, \x1c, ...
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return SourceFile(path, text, lines, ast.parse(text, filename=path))


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def ast_definitions(body) -> list:
    """Definitions directly in a block, also under if/try/with/for (but not inside other definitions)."""
    out = []
    for node in body:
        if isinstance(node, _DEFS):
            out.append(node)
        else:
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                sub = getattr(node, name, None)
                if isinstance(sub, list):
                    out.extend(ast_definitions(sub))
    return out


def _is_accessor(node) -> bool:
    """`@x.setter` / `@x.deleter`: same name as the property, not the getter."""
    return any(isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter") for d in node.decorator_list)


def _first_line(node) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def pick_definition(cands, line_hint):
    """Among same-named definitions: the one at `line_hint`, else the one Python keeps."""
    if not cands:
        return None
    if line_hint is not None:
        for c in cands:
            if line_hint in (c.lineno, _first_line(c)):
                return c
    plain = [c for c in cands if not _is_accessor(c)] or cands
    return plain[-1]  # the definition Python keeps is the last one


def _parts(qualname: str) -> list:
    return [p for p in qualname.split(".") if p and p != "<locals>"]


def ast_chain(tree, qualname: str, line_hint=None) -> list:
    """The ast definitions along `qualname` (outermost first); NotFound if any part is missing."""
    parts = _parts(qualname)
    if not parts:
        raise NotFound(f"empty qualified name {qualname!r}")
    chain, body = [], tree.body
    for i, name in enumerate(parts):
        cands = [d for d in ast_definitions(body) if d.name == name]
        node = pick_definition(cands, line_hint if i == len(parts) - 1 else None)
        if node is None:
            where = ".".join(parts[:i]) or "the module"
            raise NotFound(f"{name} not found in {where}")
        chain.append(node)
        body = node.body
    return chain


# ---------------------------------------------------------------- one definition, parsed with libcst

class Definition:
    """One function or class definition, parsed with libcst, with real line numbers."""

    def __init__(self, path, qualname, node, positions, offset):
        self.path = path
        self.qualname = qualname
        self.node = node  # cst.FunctionDef | cst.ClassDef
        self.positions = positions
        self.offset = offset  # file line = libcst line + offset
        self._parents = None

    def line_range(self, node) -> tuple:
        """(first, last) file line of any node of this definition."""
        r = self.positions[node]
        return r.start.line + self.offset, r.end.line + self.offset

    @property
    def start_line(self) -> int:
        first = self.line_range(self.node)[0]
        for d in self.node.decorators:
            first = min(first, self.line_range(d)[0])
        return first

    @property
    def end_line(self) -> int:
        return self.line_range(self.node)[1]

    def gather(self, visitor: cst.CSTVisitor) -> cst.CSTVisitor:
        """Run a read-only visitor over the definition and return it; it visits the very nodes
        `line_range` knows (`get_metadata` is not available: no MetadataWrapper runs it)."""
        self.node.visit(visitor)
        return visitor

    def _index(self):
        """One walk: every node's parent, and the nodes by type (matchers are named after node types)."""
        if self._parents is None:
            self._parents, self._by_type = _walk(self.node)
        return self._parents, self._by_type

    def ancestors(self, node):
        parents = self._index()[0]
        while id(node) in parents:
            node = parents[id(node)]
            yield node

    def findall(self, matcher) -> list:
        """Like `libcst.matchers.findall` on the definition, without a full traversal per matcher."""
        by_type = self._index()[1]
        name = type(matcher).__name__
        if name in by_type and getattr(cst, name, None) is not None:
            candidates = by_type[name]
        elif getattr(cst, name, None) is not None and isinstance(getattr(cst, name), type):
            candidates = []  # a node type that does not occur here
        else:  # OneOf, AllOf, MatchIfTrue, ...: every node
            candidates = [n for nodes in by_type.values() for n in nodes]
        return [n for n in candidates if m.matches(n, matcher)]

    def header_range(self, node=None) -> tuple:
        """The header lines of a compound statement (`def ...:`, `for ... in ...:`), decorators excluded."""
        node = self.node if node is None else node
        start = self.line_range(node)[0]
        body = getattr(node, "body", None)
        if isinstance(body, cst.IndentedBlock) and body.body:
            first = body.body[0]
            end = self.line_range(first)[0] - 1 - len(getattr(first, "leading_lines", ()))
            return start, max(start, end)
        return start, start

    def statement_range(self, node) -> tuple:
        """Lines of the statement `node` belongs to; for a compound statement, its header only
        (the statements of its body are statements of their own)."""
        if isinstance(node, (cst.BaseSmallStatement, cst.SimpleStatementLine)):
            return self.line_range(node)
        if isinstance(node, cst.BaseCompoundStatement):
            return self.header_range(node)
        for anc in self.ancestors(node):
            if isinstance(anc, (cst.BaseSmallStatement, cst.SimpleStatementLine)):
                return self.line_range(anc)
            if isinstance(anc, cst.BaseCompoundStatement):
                return self.line_range(anc)[0], self.line_range(node)[1]
        return self.line_range(node)

    def find(self, matcher, within=None) -> list:
        """Line ranges of every statement containing a node `matcher` matches (only inside a node
        matching `within`, when given), in source order."""
        found = self.findall(matcher)
        if within is not None:
            boxes = {id(b) for b in self.findall(within)}
            found = [n for n in found if any(id(a) in boxes for a in self.ancestors(n))]
        return sorted({self.statement_range(n) for n in found})


@functools.lru_cache(maxsize=None)
def _child_fields(cls) -> tuple:
    return tuple(f.name for f in dataclasses.fields(cls))


def _walk(root):
    """Parents and nodes by type, reading the node dataclasses' fields directly.

    (A libcst visitor rebuilds every node on the way back up, several times slower;
    whitespace and comment nodes are skipped: no statement matcher is about them.)
    """
    parents, by_type = {}, {}
    stack = [root]
    skip = (cst.BaseParenthesizableWhitespace, cst.EmptyLine, cst.TrailingWhitespace, cst.Comment,
            cst.Newline, cst.ParenthesizedWhitespace)
    while stack:
        node = stack.pop()
        by_type.setdefault(type(node).__name__, []).append(node)
        for name in _child_fields(type(node)):
            value = getattr(node, name)
            if isinstance(value, cst.CSTNode):
                children = (value,)
            elif isinstance(value, (list, tuple)):
                children = value
            else:
                continue
            for child in children:
                if isinstance(child, cst.CSTNode) and not isinstance(child, skip):
                    parents[id(child)] = node
                    stack.append(child)
    return parents, by_type


_FULL_PARSE = False  # True: always parse whole files with libcst (slow; the tests compare both)


def definition(path: str, qualname: str, line_hint: Optional[int] = None) -> Definition:
    """The definition `qualname` in the file `path`, parsed with libcst (cached per file version).

    `qualname` as Python spells it ("Class.method", "outer.<locals>.inner");
    `line_hint` picks among same-named definitions (its `def` or first decorator line).
    Raises NotFound when a part of the name is not there.
    """
    return _definition_cached(_file_key(path), qualname, line_hint, _FULL_PARSE)


@functools.lru_cache(maxsize=1024)
def _definition_cached(key, qualname, line_hint, full) -> Definition:
    src = _source_cached(key)
    chain = ast_chain(src.tree, qualname, line_hint)  # NotFound propagates: the name is not there
    if not full:
        try:
            return _definition_alone(src, qualname, chain)
        except Exception:  # noqa: BLE001 - any surprise: the whole-file path decides
            pass
    return _definition_in_module(key, qualname, chain)


def _definition_alone(src: SourceFile, qualname: str, chain: list) -> Definition:
    """Parse only the definition's lines (as a class member when it is indented)."""
    target = chain[-1]
    start, end = _first_line(target), target.end_lineno
    text = "\n".join(src.lines[start - 1:end]) + "\n"
    parent = chain[-2] if len(chain) > 1 else None
    wrapper = None
    if target.col_offset > 0:
        wrapper = parent.name if isinstance(parent, ast.ClassDef) else "_lossmap_scope"
        text = f"class {wrapper}:\n{text}"
    module = cst.parse_module(text)
    positions = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    node = module.body[0]
    if wrapper is not None:
        if not m.matches(node, m.ClassDef(name=m.Name(wrapper))):
            raise NotFound("wrapper class lost")
        node = node.body.body[0]
    kind = m.ClassDef if isinstance(target, ast.ClassDef) else m.FunctionDef
    if not m.matches(node, kind(name=m.Name(target.name))):
        raise NotFound(f"{target.name} is not the definition parsed")
    d = Definition(src.path, qualname, node, positions, start - 1 - (1 if wrapper else 0))
    if d.start_line != start:
        raise NotFound("line numbers disagree")  # never show shifted lines: take the slow path
    return d


@functools.lru_cache(maxsize=32)
def _module_cst(key):
    src = _source_cached(key)
    module = cst.parse_module(src.text)
    return module, MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)


def _cst_defs(body) -> list:
    out = []
    for node in body:
        if isinstance(node, (cst.FunctionDef, cst.ClassDef)):
            out.append(node)
        elif isinstance(node, cst.BaseCompoundStatement):
            for sub in _cst_blocks(node):
                out.extend(_cst_defs(sub))
    return out


def _cst_blocks(node) -> list:
    blocks = []
    for name in ("body", "orelse", "finalbody"):
        sub = getattr(node, name, None)
        while sub is not None and not isinstance(sub, (cst.IndentedBlock, cst.SimpleStatementSuite)):
            # If.orelse is an If (elif) or an Else; Try.orelse an Else; both have a body
            if isinstance(sub, cst.If):
                blocks.extend(_cst_blocks(sub))
                sub = None
            else:
                sub = getattr(sub, "body", None)
        if sub is not None:
            blocks.append(sub.body)
    for h in getattr(node, "handlers", ()) or ():
        blocks.append(h.body.body)
    for c in getattr(node, "cases", ()) or ():
        blocks.append(c.body.body)
    return blocks


def _definition_in_module(key, qualname: str, chain: list) -> Definition:
    """The whole file parsed with libcst; the definition found by name along the qualname."""
    module, positions = _module_cst(key)
    body = module.body
    node = None
    for want in chain:  # the ast chain picked among same-named definitions by line: keep that choice
        cands = [d for d in _cst_defs(body) if d.name.value == want.name]
        node = next((c for c in cands if positions[c].start.line == want.lineno), None)
        if node is None:
            raise NotFound(f"{want.name} not found by libcst")
        body = node.body.body if isinstance(node.body, cst.IndentedBlock) else []
    return Definition(key[0], qualname, node, positions, 0)
