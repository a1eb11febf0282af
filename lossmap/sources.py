"""The source behind the total: real lines of the installed library and of user code.

Engine-agnostic. An engine describes *where* to look (`Anchor`: a module, a
qualified name, libcst matchers for the statements that matter, notes built
from the analysis); this module finds those functions by structure in the
installed files and returns plain data (`Step`, `CallSite`, `SourceLine`) that
renderers print without importing anything.

Nothing here uses hard-coded line numbers or regular expressions on source
text. A function is found by its structure (class -> method, or a module-level
function, following `<locals>` for nested definitions); statements are found
with libcst matchers. When a library version moves or renames something, the
step says which anchor or statement was not found (`found=False`, `missing`)
instead of showing wrong lines.

Cost: libcst with position metadata over a whole Keras module takes 0.1-0.9 s
per file, the whole walkthrough several seconds. So each file is read and
indexed once per process with Python's `ast` (C speed) only to learn where each
definition starts and ends; that definition's own text (verbatim, real line
numbers kept by an offset) is then parsed with libcst + `PositionProvider`,
and the structure is checked again there (ClassDef -> FunctionDef) before any
matcher runs. If the short parse fails for any reason, the whole file is
parsed with libcst and searched structurally (`_FULL_PARSE` forces that path;
the tests check both give the same lines).
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
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, PositionProvider

# ---------------------------------------------------------------- plain output


@dataclass
class SourceLine:
    number: int  # real line number in the file
    text: str  # the line, without its newline
    highlight: bool
    note: Optional[str] = None


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


@dataclass
class CallSite:
    """Where a term comes from in the code of its layer, loss or regularizer."""

    term_id: str
    file: Optional[str]
    display_path: Optional[str]
    qualname: Optional[str]  # the function shown, e.g. "MyLayer._penalty"
    start_line: Optional[int]
    lines: list = field(default_factory=list)  # [SourceLine]
    found: bool = True
    missing: Optional[str] = None


# ---------------------------------------------------------------- specs (engine input)

Note = Any  # str | None | Callable[[Analysis], Optional[str]]


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


@dataclass(frozen=True)
class Anchor:
    """One walkthrough step: a function in an importable module, and what to highlight in it."""

    key: str
    title: str
    module: str  # import path, e.g. "keras.src.trainers.compile_utils"
    qualname: str  # e.g. "CompileLoss.call" or "reduce_values"
    explanation: Note  # one paragraph, or a callable(analysis) returning it
    statements: Sequence = ()  # [Stmt | (matcher, note) | (matcher, note, label)]
    when: Optional[Callable] = None  # when(analysis): does this model use the step?


def _as_stmt(spec) -> Stmt:
    if isinstance(spec, Stmt):
        return spec
    if isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 3:
        return Stmt(*spec)
    raise TypeError(f"a statement spec is Stmt or (matcher, note[, label]), not {spec!r}")


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


# ---------------------------------------------------------------- reading and indexing files

@dataclass
class _Source:
    path: str
    text: str
    lines: list  # without newlines; lines[i] is line i + 1
    tree: ast.Module


def _file_key(path: str):
    st = os.stat(path)
    return (os.path.abspath(path), st.st_mtime_ns, st.st_size)


def _source(path: str) -> _Source:
    return _source_cached(_file_key(path))


@functools.lru_cache(maxsize=256)
def _source_cached(key) -> _Source:
    path = key[0]
    with tokenize.open(path) as fh:  # honours a coding cookie
        text = fh.read()
    # text mode: every line ending is "\n" here; str.splitlines would also split on \f, \x1c, ...
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return _Source(path, text, lines, ast.parse(text, filename=path))


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _ast_defs(body) -> list:
    """Definitions directly in a block, also under if/try/with/for (but not inside other definitions)."""
    out = []
    for node in body:
        if isinstance(node, _DEFS):
            out.append(node)
        else:
            for name in ("body", "orelse", "finalbody", "handlers", "cases"):
                sub = getattr(node, name, None)
                if isinstance(sub, list):
                    out.extend(_ast_defs(sub))
    return out


def _is_accessor(node) -> bool:
    """`@x.setter` / `@x.deleter`: same name as the property, not the getter."""
    return any(isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter") for d in node.decorator_list)


def _first_line(node) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _pick(cands, line_hint):
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


def _ast_chain(tree, qualname: str, line_hint=None) -> list:
    """The ast definitions along `qualname` (outermost first); NotFound if any part is missing."""
    parts = _parts(qualname)
    if not parts:
        raise NotFound(f"empty qualified name {qualname!r}")
    chain, body = [], tree.body
    for i, name in enumerate(parts):
        cands = [d for d in _ast_defs(body) if d.name == name]
        node = _pick(cands, line_hint if i == len(parts) - 1 else None)
        if node is None:
            where = ".".join(parts[:i]) or "the module"
            raise NotFound(f"{name} not found in {where}")
        chain.append(node)
        body = node.body
    return chain


# ---------------------------------------------------------------- one definition, parsed with libcst

class _Def:
    """One function or class definition, parsed with libcst, with real line numbers."""

    def __init__(self, path, qualname, node, positions, offset):
        self.path = path
        self.qualname = qualname
        self.node = node  # cst.FunctionDef | cst.ClassDef
        self.positions = positions
        self.offset = offset  # file line = libcst line + offset
        self._parents = None

    def line_range(self, node) -> tuple:
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

    def find(self, stmt: Stmt) -> list:
        """Line ranges of every statement `stmt` matches, in source order."""
        found = self.findall(stmt.matcher)
        if stmt.within is not None:
            boxes = {id(b) for b in self.findall(stmt.within)}
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


def definition(path: str, qualname: str, line_hint: Optional[int] = None) -> _Def:
    """The definition `qualname` in the file `path`, parsed with libcst (cached per file version)."""
    return _definition_cached(_file_key(path), qualname, line_hint, _FULL_PARSE)


@functools.lru_cache(maxsize=1024)
def _definition_cached(key, qualname, line_hint, full) -> _Def:
    src = _source_cached(key)
    chain = _ast_chain(src.tree, qualname, line_hint)  # NotFound propagates: the name is not there
    if not full:
        try:
            return _definition_alone(src, qualname, chain)
        except Exception:  # noqa: BLE001 - any surprise: the whole-file path decides
            pass
    return _definition_in_module(key, qualname, chain)


def _definition_alone(src: _Source, qualname: str, chain: list) -> _Def:
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
    d = _Def(src.path, qualname, node, positions, start - 1 - (1 if wrapper else 0))
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


def _definition_in_module(key, qualname: str, chain: list) -> _Def:
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
    return _Def(key[0], qualname, node, positions, 0)


# ---------------------------------------------------------------- lines and highlights

def _lines(src: _Source, start: int, end: int, marks: dict) -> list:
    out = []
    for n in range(start, end + 1):
        hl, note = marks.get(n, (False, None))
        out.append(SourceLine(n, src.lines[n - 1] if n - 1 < len(src.lines) else "", hl, note))
    return out


def _mark(marks: dict, ranges, note: Optional[str]):
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
        stmt = _as_stmt(spec)
        ranges = d.find(stmt)
        if not ranges:
            missing.append(_label(stmt))
            continue
        _mark(marks, ranges, stmt.note)
    start, end = d.start_line, d.end_line
    if missing:
        what = "; ".join(f"`{s}`" for s in missing)
        return Step(key, title, explanation, path, shown, qualname, start, end, [], False,
                    f"in {qualname} ({shown}, lines {start}-{end}) the statement(s) {what} were not found")
    return Step(key, title, explanation, path, shown, qualname, start, end,
                _lines(_source(path), start, end, marks), True, None)


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


# ---------------------------------------------------------------- the walkthrough

@contextlib.contextmanager
def _no_gc_pauses():
    """Parsing allocates many small objects; with TensorFlow loaded, the full collections they
    trigger cost about half a second each. They wait until the stage is over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()



def _resolve(note, analysis):
    return note(analysis) if callable(note) else note


def walkthrough(analysis, anchors: Sequence[Anchor]) -> list:
    """The steps this model uses (each anchor's `when`), located in the installed sources."""
    with _no_gc_pauses():
        return _walkthrough(analysis, anchors)


def _walkthrough(analysis, anchors) -> list:
    steps = []
    for a in anchors:
        try:
            if a.when is not None and not a.when(analysis):
                continue
            stmts = []
            for spec in a.statements:
                s = _as_stmt(spec)
                if s.when is not None and not s.when(analysis):
                    continue
                stmts.append(replace(s, note=_resolve(s.note, analysis), when=None))
            steps.append(locate(a.module, a.qualname, stmts, key=a.key, title=a.title,
                                explanation=_resolve(a.explanation, analysis) or ""))
        except Exception as exc:  # noqa: BLE001 - one broken step must not hide the others
            steps.append(failed_step(a.key, a.title, a.qualname, exc))
    return steps


def failed_step(key: str, title: str, qualname: str, exc: BaseException) -> Step:
    return Step(key, title or qualname or key, "", None, None, qualname, None, None, [], False,
                f"lossmap could not build this step: {type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- where each term comes from

ADD_LOSS_CALL = m.Call(func=m.Attribute(attr=m.Name("add_loss")))
SUPER_CALL = m.Call(func=m.Attribute(value=m.Call(func=m.Name("super")), attr=m.Name()))
NAME_CALL = m.Call(func=m.Name())


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and v != v:
        return "NaN"
    return f"{v:.4g}"


def user_call_sites(analysis) -> dict:
    """{term_id: [CallSite]}: the add_loss calls and the custom loss/regularizer code behind each term."""
    with _no_gc_pauses():
        return _user_call_sites(analysis)


def _user_call_sites(analysis) -> dict:
    out = {}
    for t in analysis.terms:
        origin = getattr(t, "origin", None)
        if not origin:
            continue
        try:
            if t.kind == "add_loss":
                sites = _add_loss_sites(t, analysis)
            else:
                sites = _definition_sites(t)
        except Exception as exc:  # noqa: BLE001
            sites = [CallSite(t.id, origin.get("file"), display_path(origin.get("file")), origin.get("qualname"),
                              None, [], False, f"lossmap could not read this code: {type(exc).__name__}: {exc}")]
        out[t.id] = sites
    return out


def _origin_problem(origin) -> Optional[str]:
    if not origin.get("file"):
        return f"the source of {origin.get('qualname')} is not available (defined interactively or compiled)"
    if not origin.get("qualname"):
        return "the code behind this term has no qualified name"
    return None


class _ClassScope:
    """Method lookup for one class, through its base classes defined in the same file."""

    def __init__(self, path: str, qualname: str, line_hint: Optional[int]):
        self.path = path
        self.src = _source(path)
        self.chain = _ast_chain(self.src.tree, qualname, line_hint)
        if not isinstance(self.chain[-1], ast.ClassDef):
            raise NotFound(f"{qualname} is not a class in {display_path(path)}")
        self.qualname = qualname
        self.mro = self._linearise(self.chain, qualname)

    def _scope_bodies(self, chain):
        """Bodies to look up a base class name in: the enclosing scopes, innermost first, then the module."""
        bodies = [n.body for n in reversed(chain[:-1])]
        return bodies + [self.src.tree.body]

    def _linearise(self, chain, qualname, seen=None):
        seen = set() if seen is None else seen
        node = chain[-1]
        if id(node) in seen:
            return []
        seen.add(id(node))
        order = [(qualname, node)]
        for base in node.bases:
            if not isinstance(base, ast.Name):
                continue  # keras.layers.Layer and the like: not in this file
            for depth, body in enumerate(self._scope_bodies(chain)):
                cands = [d for d in _ast_defs(body) if isinstance(d, ast.ClassDef) and d.name == base.id
                         and d is not node]
                if cands:
                    found = cands[-1]
                    outer = chain[:len(chain) - 1 - depth]
                    base_qual = ".".join(_qualname_parts(outer) + [found.name])
                    order += self._linearise(outer + [found], base_qual, seen)
                    break
        return order

    def lookup(self, name: str, after: Optional[str] = None):
        """(owner qualname, ast node) of method `name`, as Python's attribute lookup would find it here."""
        mro = self.mro
        if after is not None:
            idx = next((i for i, (q, _) in enumerate(mro) if q == after), None)
            mro = mro[idx + 1:] if idx is not None else []
        for owner, cls in mro:
            cands = [d for d in cls.body if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef)) and d.name == name]
            hit = _pick(cands, None)
            if hit is not None:
                return owner, hit
        return None


def _qualname_parts(chain) -> list:
    out = []
    for node in chain:
        out.append(node.name)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append("<locals>")
    return out


def _module_function(src: _Source, name: str):
    cands = [d for d in _ast_defs(src.tree.body) if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef))
             and d.name == name]
    return _pick(cands, None)


def _first_param(d: _Def) -> Optional[str]:
    params = d.node.params.params if isinstance(d.node, cst.FunctionDef) else ()
    return params[0].name.value if params else None


def _add_loss_sites(t, analysis) -> list:
    origin = t.origin
    problem = _origin_problem(origin)
    if problem:
        return [CallSite(t.id, origin.get("file"), display_path(origin.get("file")), origin.get("qualname"),
                         None, [], False, problem)]
    path, qual = origin["file"], origin["qualname"]
    if origin.get("kind") != "class":
        return _definition_sites(t)
    scope = _ClassScope(path, qual, origin.get("line"))
    for root in ("call", "build"):
        sites = _reach(scope, root, t, analysis)
        if sites:
            return sites
    shown = display_path(path)
    return [CallSite(t.id, path, shown, qual, None, [], False,
                     f"no add_loss(...) call found in {qual}.call or the methods it calls ({shown})")]


def _reach(scope: _ClassScope, root: str, t, analysis) -> list:
    """Functions reachable from `root` (self.m(...), super().m(...), module functions) that add losses."""
    start = scope.lookup(root)
    if start is None:
        return []
    graph, order, defs = {}, [], {}
    todo = [(f"{start[0]}.{root}", start[1].lineno, start[0])]
    while todo:
        qual, line, owner = todo.pop(0)
        if qual in graph:
            continue
        d = definition(scope.path, qual, line)
        defs[qual] = d
        order.append(qual)
        edges = []  # (callee qualname, line range of the call)
        this = _first_param(d) if owner else None
        for node in d.findall(m.Call()):
            target = None
            func = node.func
            if this and m.matches(func, m.Attribute(value=m.Name(this), attr=m.Name())):
                hit = scope.lookup(func.attr.value)
                if hit:
                    target = (f"{hit[0]}.{func.attr.value}", hit[1].lineno, hit[0])
            elif owner and m.matches(node, SUPER_CALL):
                hit = scope.lookup(func.attr.value, after=owner)
                if hit:
                    target = (f"{hit[0]}.{func.attr.value}", hit[1].lineno, hit[0])
            elif m.matches(node, NAME_CALL):
                fn = _module_function(scope.src, func.value)
                if fn is not None:
                    target = (fn.name, fn.lineno, None)
            if target is not None:
                edges.append((target[0], d.statement_range(node)))
                todo.append(target)
        adds = sorted({d.statement_range(n) for n in d.findall(ADD_LOSS_CALL)})
        graph[qual] = (edges, adds)
    # which functions lead to an add_loss call
    leads = {q for q, (_, adds) in graph.items() if adds}
    changed = True
    while changed:
        changed = False
        for q, (edges, _) in graph.items():
            if q not in leads and any(c in leads for c, _ in edges):
                leads.add(q)
                changed = True
    if not leads:
        return []
    n_adds = sum(len(graph[q][1]) for q in leads)
    sites = []
    src = scope.src
    for q in order:
        if q not in leads:
            continue
        d = defs[q]
        edges, adds = graph[q]
        marks = {}
        if adds:
            note = f"{t.id} = {_fmt(t.value)}"
            if t.shape:
                note += f" (a tensor of shape {t.shape}: Keras sums every entry)"
            if n_adds > 1:
                note += f"; this layer has {n_adds} add_loss calls, this term is its entry #{_index(t)}"
            _mark(marks, adds, note)
        for callee, rng in edges:
            if callee in leads and callee != q:
                _mark(marks, [rng], f"-> {callee}, which reaches add_loss")
        sites.append(CallSite(t.id, scope.path, display_path(scope.path), q, d.start_line,
                              _lines(src, d.start_line, d.end_line, marks), True, None))
    return sites


def _index(t) -> str:
    tail = t.id.rsplit("/", 1)[-1]
    return tail if tail.isdigit() else "?"


def _definition_sites(t) -> list:
    """A custom loss or regularizer: its function, or its class's `__call__` / `call`."""
    origin = t.origin
    problem = _origin_problem(origin)
    path, qual = origin.get("file"), origin.get("qualname")
    if problem:
        return [CallSite(t.id, path, display_path(path), qual, None, [], False, problem)]
    note = _definition_note(t)
    targets = []
    if origin.get("kind") == "class":
        scope = _ClassScope(path, qual, origin.get("line"))
        for name in ("__call__", "call"):
            hit = scope.lookup(name)
            if hit is not None:
                targets.append((f"{hit[0]}.{name}", hit[1].lineno))
        if not targets:
            targets.append((qual, origin.get("line")))
    else:
        targets.append((qual, origin.get("line")))
    sites = []
    src = _source(path)
    for i, (q, line) in enumerate(targets):
        try:
            d = definition(path, q, line)
        except NotFound as exc:
            sites.append(CallSite(t.id, path, display_path(path), q, None, [], False,
                                  f"{q} not found in {display_path(path)}: {exc}"))
            continue
        marks = {}
        _mark(marks, [d.header_range()], note if i == 0 else None)
        sites.append(CallSite(t.id, path, display_path(path), q, d.start_line,
                              _lines(src, d.start_line, d.end_line, marks), True, None))
    return sites


def _definition_note(t) -> str:
    if t.kind == "compiled":
        w = "" if t.weight == 1.0 else f", times loss weight {_fmt(t.weight)} = {_fmt(t.contribution)}"
        return f"{t.id}: the loss of output '{t.output}' = {_fmt(t.value)}{w}"
    if t.kind == "weight_regularizer":
        return f"{t.id}: the regularizer of {t.variable} = {_fmt(t.value)}"
    if t.kind == "activity_regularizer":
        return f"{t.id}: the activity regularizer of layer {t.layer} = {_fmt(t.value)}"
    return f"{t.id} = {_fmt(t.value)}"
