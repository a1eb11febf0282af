"""Where each term comes from in the user's own code: add_loss calls, custom losses and regularizers.

Reads each term's `origin` (file, qualified name, line) and follows, by
structure, the methods and module functions a layer's `call` reaches.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Optional

import libcst as cst
import libcst.matchers as m

from lossmap.sources.highlight import mark, source_lines
from lossmap.sources.index import (Definition, NotFound, SourceFile, ast_chain, ast_definitions, definition,
                                   display_path, no_gc_pauses, pick_definition, source_file)

ADD_LOSS_CALL = m.Call(func=m.Attribute(attr=m.Name("add_loss")))
SUPER_CALL = m.Call(func=m.Attribute(value=m.Call(func=m.Name("super")), attr=m.Name()))
NAME_CALL = m.Call(func=m.Name())


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


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and v != v:
        return "NaN"
    return f"{v:.4g}"


def user_call_sites(analysis) -> dict:
    """{term_id: [CallSite]}: the add_loss calls and the custom loss/regularizer code behind each term."""
    with no_gc_pauses():
        return _user_call_sites(analysis)


def _user_call_sites(analysis) -> dict:
    out = {}
    for t in analysis.terms:
        origin = getattr(t, "origin", None)
        if not origin:
            continue
        try:
            if t.kind == "add_loss":
                sites = _add_loss_sites(t)
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


# ---------------------------------------------------------------- method lookup in one file

class _ClassScope:
    """Method lookup for one class, through its base classes defined in the same file."""

    def __init__(self, path: str, qualname: str, line_hint: Optional[int]):
        self.path = path
        self.src = source_file(path)
        self.chain = ast_chain(self.src.tree, qualname, line_hint)
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
                cands = [d for d in ast_definitions(body) if isinstance(d, ast.ClassDef) and d.name == base.id
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
            hit = pick_definition(cands, None)
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


def _module_function(src: SourceFile, name: str):
    cands = [d for d in ast_definitions(src.tree.body) if isinstance(d, (ast.FunctionDef, ast.AsyncFunctionDef))
             and d.name == name]
    return pick_definition(cands, None)


def _first_param(d: Definition) -> Optional[str]:
    params = d.node.params.params if isinstance(d.node, cst.FunctionDef) else ()
    return params[0].name.value if params else None


# ---------------------------------------------------------------- add_loss: the calls that reach it

def _add_loss_sites(t) -> list:
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
        sites = _reach(scope, root, t)
        if sites:
            return sites
    shown = display_path(path)
    return [CallSite(t.id, path, shown, qual, None, [], False,
                     f"no add_loss(...) call found in {qual}.call or the methods it calls ({shown})")]


def _call_target(scope: _ClassScope, node, this: Optional[str], owner: Optional[str]):
    """(qualname, line, owner) of what the call `node` runs, when it is defined in this file."""
    func = node.func
    if this and m.matches(func, m.Attribute(value=m.Name(this), attr=m.Name())):
        hit = scope.lookup(func.attr.value)
        if hit:
            return f"{hit[0]}.{func.attr.value}", hit[1].lineno, hit[0]
    elif owner and m.matches(node, SUPER_CALL):
        hit = scope.lookup(func.attr.value, after=owner)
        if hit:
            return f"{hit[0]}.{func.attr.value}", hit[1].lineno, hit[0]
    elif m.matches(node, NAME_CALL):
        fn = _module_function(scope.src, func.value)
        if fn is not None:
            return fn.name, fn.lineno, None
    return None


def _call_graph(scope: _ClassScope, root: str, start) -> tuple:
    """Breadth first from `root`: {qualname: (edges, add_loss ranges)}, the visiting order, the definitions."""
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
            target = _call_target(scope, node, this, owner)
            if target is not None:
                edges.append((target[0], d.statement_range(node)))
                todo.append(target)
        adds = sorted({d.statement_range(n) for n in d.findall(ADD_LOSS_CALL)})
        graph[qual] = (edges, adds)
    return graph, order, defs


def _leading_to_add_loss(graph) -> set:
    leads = {q for q, (_, adds) in graph.items() if adds}
    changed = True
    while changed:
        changed = False
        for q, (edges, _) in graph.items():
            if q not in leads and any(c in leads for c, _ in edges):
                leads.add(q)
                changed = True
    return leads


def _reach(scope: _ClassScope, root: str, t) -> list:
    """Functions reachable from `root` (self.m(...), super().m(...), module functions) that add losses."""
    start = scope.lookup(root)
    if start is None:
        return []
    graph, order, defs = _call_graph(scope, root, start)
    leads = _leading_to_add_loss(graph)
    if not leads:
        return []
    n_adds = sum(len(graph[q][1]) for q in leads)
    sites = []
    for q in order:
        if q not in leads:
            continue
        d = defs[q]
        edges, adds = graph[q]
        marks = {}
        if adds:
            mark(marks, adds, _add_loss_note(t, n_adds))
        for callee, rng in edges:
            if callee in leads and callee != q:
                mark(marks, [rng], f"-> {callee}, which reaches add_loss")
        sites.append(CallSite(t.id, scope.path, display_path(scope.path), q, d.start_line,
                              source_lines(scope.src, d.start_line, d.end_line, marks), True, None))
    return sites


def _add_loss_note(t, n_adds: int) -> str:
    note = f"{t.id} = {_fmt(t.value)}"
    if t.shape:
        note += f" (a tensor of shape {t.shape}: Keras sums every entry)"
    if n_adds > 1:
        note += f"; this layer has {n_adds} add_loss calls, this term is its entry #{_entry_number(t)}"
    return note


def _entry_number(t) -> str:
    tail = t.id.rsplit("/", 1)[-1]
    return tail if tail.isdigit() else "?"


# ---------------------------------------------------------------- custom losses and regularizers

def _definition_sites(t) -> list:
    """A custom loss or regularizer: its function, or its class's `__call__` / `call`."""
    origin = t.origin
    problem = _origin_problem(origin)
    path, qual = origin.get("file"), origin.get("qualname")
    if problem:
        return [CallSite(t.id, path, display_path(path), qual, None, [], False, problem)]
    note = _definition_note(t)
    targets = _definition_targets(path, qual, origin)
    sites = []
    src = source_file(path)
    for i, (q, line) in enumerate(targets):
        try:
            d = definition(path, q, line)
        except NotFound as exc:
            sites.append(CallSite(t.id, path, display_path(path), q, None, [], False,
                                  f"{q} not found in {display_path(path)}: {exc}"))
            continue
        marks = {}
        mark(marks, [d.header_range()], note if i == 0 else None)
        sites.append(CallSite(t.id, path, display_path(path), q, d.start_line,
                              source_lines(src, d.start_line, d.end_line, marks), True, None))
    return sites


def _definition_targets(path: str, qual: str, origin) -> list:
    """[(qualname, line hint)]: a function itself; of a class, its `__call__` and `call`."""
    if origin.get("kind") != "class":
        return [(qual, origin.get("line"))]
    scope = _ClassScope(path, qual, origin.get("line"))
    targets = []
    for name in ("__call__", "call"):
        hit = scope.lookup(name)
        if hit is not None:
            targets.append((f"{hit[0]}.{name}", hit[1].lineno))
    return targets or [(qual, origin.get("line"))]


def _definition_note(t) -> str:
    if t.kind == "compiled":
        w = "" if t.weight == 1.0 else f", times loss weight {_fmt(t.weight)} = {_fmt(t.contribution)}"
        return f"{t.id}: the loss of output '{t.output}' = {_fmt(t.value)}{w}"
    if t.kind == "weight_regularizer":
        return f"{t.id}: the regularizer of {t.variable} = {_fmt(t.value)}"
    if t.kind == "activity_regularizer":
        return f"{t.id}: the activity regularizer of layer {t.layer} = {_fmt(t.value)}"
    return f"{t.id} = {_fmt(t.value)}"
