"""Read a training step's source: its tapes, what it differentiates, and the statements in between.

A read-only libcst visitor (`GatherStepVisitor`, in the manner of libcst's
`Gather*Visitor` codemods) walks one function with true line numbers and
gathers plain facts: every simple statement with the tape blocks and the
loops or branches around it, every `GradientTape` and every `.gradient(...)`
call on one, the optimizer calls, the calls of the model and the returns.
Splitting a differentiated loss into addends is `lossmap.steps.split`.

    >>> src = '''
    ... def step(x, y):
    ...     with tf.GradientTape() as tape:
    ...         loss = mse(y, model(x, training=True)) + 0.1 * penalty(x)
    ...     grads = tape.gradient(loss, model.trainable_variables)
    ...     optimizer.apply_gradients(zip(grads, model.trainable_variables))
    ... '''
    >>> step = read_source(src, "step")
    >>> [(g.tape, g.target_text, g.kind) for g in step.gradients]
    [('tape', 'loss', 'objective')]
"""
from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Optional

import libcst as cst
import libcst.matchers as m
from libcst.metadata import MetadataWrapper, PositionProvider

OPTIMIZER_METHODS = ("apply_gradients", "apply", "minimize")
TRAINABLE_ATTRS = ("trainable_variables", "trainable_weights")


@dataclass
class Statement:
    """One simple statement of the step, in source order."""

    index: int
    line: int
    end_line: int
    node: cst.CSTNode  # the small statement (Assign, AugAssign, Expr, Return, ...)
    text: str
    assigned: tuple  # names it binds
    reads: frozenset  # names it reads
    tapes: tuple  # names of the tapes whose `with` block encloses it, outermost first
    blocks: tuple  # (keyword, line) of the enclosing for / while / if / try blocks, outermost first


@dataclass
class Tape:
    name: str
    index: int
    line: int  # the `with` line
    end_line: int  # last line of its block
    persistent: Optional[bool]  # None when not a literal
    call: cst.Call


@dataclass
class GradientCall:
    """`<tape>.gradient(target, sources)`: what a tape differentiates."""

    index: int
    tape: str
    line: int
    statement: int
    call: cst.Call
    target: cst.BaseExpression
    sources: cst.BaseExpression
    target_text: str
    sources_text: str
    results: tuple  # names bound to the result
    enclosing_tapes: tuple  # tapes recording while the gradient is taken
    kind: str = "input"  # "objective" (feeds an optimizer / differentiates variables) or "input"
    minimize: Optional[str] = None  # the optimizer, when this is `optimizer.minimize(loss, var_list, tape=...)`


@dataclass
class OptimizerCall:
    """`<optimizer>.apply_gradients(...)`, `.apply(...)` or `.minimize(...)`."""

    line: int
    statement: int
    method: str
    optimizer_text: str
    call: cst.Call
    reads: frozenset  # names its arguments read (the gradients it applies)


@dataclass
class ModelCall:
    """A call that may be the model (or a layer of it): resolved against live objects later."""

    line: int
    text: str
    func_text: str
    root: str  # the first name of the callee (`self`, `model`, `encoder`)
    attrs: tuple  # attribute path after the root
    training: Optional[str]  # source text of the `training=` argument, None when absent
    statement: int


@dataclass
class StepSource:
    """Everything gathered from one function, with lines as in its file."""

    name: str
    qualname: str
    file: Optional[str]
    start_line: int  # first line of the definition (decorators included)
    end_line: int
    params: list
    module: cst.Module
    function: cst.FunctionDef
    positions: dict = field(repr=False, default_factory=dict)
    offset: int = 0  # file line = parsed line + offset
    statements: list = field(default_factory=list)
    tapes: list = field(default_factory=list)
    gradients: list = field(default_factory=list)
    optimizer_calls: list = field(default_factory=list)
    model_calls: list = field(default_factory=list)
    returns: list = field(default_factory=list)  # statement indices of `return`
    locals: frozenset = frozenset()  # every name the function binds (parameters included)

    def line_of(self, node) -> int:
        return self.positions[node].start.line + self.offset

    def end_line_of(self, node) -> int:
        return self.positions[node].end.line + self.offset

    def code(self, node) -> str:
        return self.module.code_for_node(node).strip()

    def source_lines(self) -> list:
        return self.module.code.splitlines()


# ---------------------------------------------------------------- small structural helpers
def dotted(node) -> Optional[str]:
    """`a.b.c` for a Name/Attribute chain, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        inner = dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr.value}"
    return None


def last_name(node) -> Optional[str]:
    """The called name: `sum` for `sum(...)`, `add_n` for `tf.math.add_n(...)`."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return node.attr.value
    return None


def root_and_attrs(node):
    """(`self`, ("encoder",)) for `self.encoder`; (None, ()) when the chain has a call or subscript."""
    attrs = []
    while isinstance(node, cst.Attribute):
        attrs.append(node.attr.value)
        node = node.value
    if isinstance(node, cst.Name):
        return node.value, tuple(reversed(attrs))
    return None, ()


def keyword(call: cst.Call, name: str):
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == name:
            return arg.value
    return None


def positional(call: cst.Call, index: int):
    args = [a for a in call.args if a.keyword is None and not a.star]
    return args[index].value if index < len(args) else None


def bound_names(target) -> list:
    """Names bound by an assignment target (tuples and lists unpacked)."""
    if isinstance(target, cst.Name):
        return [target.value]
    if isinstance(target, (cst.Tuple, cst.List)):
        out = []
        for el in target.elements:
            out += bound_names(el.value)
        return out
    if isinstance(target, cst.StarredElement):
        return bound_names(target.value)
    return []


class _NameReads(cst.CSTVisitor):
    """Names read in an expression (not attribute names, not inside nested lambdas' parameters)."""

    def __init__(self):
        self.names = set()

    def visit_Name(self, node):
        self.names.add(node.value)

    def visit_Attribute(self, node):
        node.value.visit(self)
        return False  # the attribute's own name is not a variable

    def visit_Arg(self, node):
        node.value.visit(self)
        return False  # a keyword's name is not a variable


def names_read(node) -> frozenset:
    reader = _NameReads()
    node.visit(reader)
    return frozenset(reader.names)


def _literal_bool(node) -> Optional[bool]:
    if isinstance(node, cst.Name) and node.value in ("True", "False"):
        return node.value == "True"
    return None


def is_tape_call(node) -> bool:
    return isinstance(node, cst.Call) and last_name(node.func) == "GradientTape"


# ---------------------------------------------------------------- the visitor
class GatherStepVisitor(cst.CSTVisitor):
    """Gathers statements, tapes, gradient calls, optimizer calls and model calls of one function."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, step: StepSource):
        super().__init__()
        self.step = step
        self._tapes: list = []  # open tape names
        self._blocks: list = []  # open (keyword, line)
        self._depth = 0  # nested function depth (0: the step itself)
        self._with_tapes: dict = {}  # id(With) -> names of tapes it opened
        self._statement: Optional[int] = None

    def _line(self, node) -> int:
        return self.get_metadata(PositionProvider, node).start.line + self.step.offset

    def _end_line(self, node) -> int:
        return self.get_metadata(PositionProvider, node).end.line + self.step.offset

    # nested scopes are not the step's own statements
    def visit_FunctionDef(self, node):
        self._depth += 1
        return self._depth == 1

    def leave_FunctionDef(self, node):
        self._depth -= 1

    def visit_Lambda(self, node):
        return False

    def visit_ClassDef(self, node):
        return False

    # blocks
    def visit_With(self, node):
        opened = []
        for item in node.items:
            if is_tape_call(item.item) and item.asname is not None and isinstance(item.asname.name, cst.Name):
                name = item.asname.name.value
                persistent = keyword(item.item, "persistent")
                if persistent is None:
                    persistent = positional(item.item, 0)
                self.step.tapes.append(Tape(
                    name=name, index=len(self.step.tapes), line=self._line(node), end_line=self._end_line(node),
                    persistent=False if persistent is None else _literal_bool(persistent), call=item.item))
                opened.append(name)
        self._with_tapes[id(node)] = opened
        self._tapes.extend(opened)

    def leave_With(self, node):
        for _ in self._with_tapes.pop(id(node), []):
            self._tapes.pop()

    def _open(self, keyword_, node):
        self._blocks.append((keyword_, self._line(node)))

    def _close(self, *_):
        self._blocks.pop()

    def visit_For(self, node):
        self._open("for", node)

    leave_For = _close

    def visit_While(self, node):
        self._open("while", node)

    leave_While = _close

    def visit_If(self, node):
        self._open("if", node)

    leave_If = _close

    def visit_Try(self, node):
        self._open("try", node)

    leave_Try = _close

    # statements
    def visit_SimpleStatementLine(self, node):
        for small in node.body:
            self._add_statement(small)
        return True

    def _add_statement(self, small):
        assigned = []
        if isinstance(small, cst.Assign):
            for t in small.targets:
                assigned += bound_names(t.target)
        elif isinstance(small, (cst.AugAssign, cst.AnnAssign)):
            assigned += bound_names(small.target)
        reads = names_read(small.value) if getattr(small, "value", None) is not None else frozenset()
        if isinstance(small, cst.AugAssign):
            reads = reads | frozenset(bound_names(small.target))
        if isinstance(small, cst.Expr):
            reads = names_read(small.value)
        index = len(self.step.statements)
        self.step.statements.append(Statement(
            index=index, line=self._line(small), end_line=self._end_line(small), node=small,
            text=self.step.code(small), assigned=tuple(assigned), reads=reads,
            tapes=tuple(self._tapes), blocks=tuple(self._blocks)))
        if isinstance(small, cst.Return):
            self.step.returns.append(index)
        self._statement = index

    # calls inside statements
    def visit_Call(self, node):
        if self._statement is None or self._depth != 1:
            return True
        attr = node.func.attr.value if isinstance(node.func, cst.Attribute) else None
        owner = dotted(node.func.value) if isinstance(node.func, cst.Attribute) else None
        tape_names = {t.name for t in self.step.tapes}
        if attr == "gradient" and owner in tape_names:
            self._add_gradient(node, owner)
        elif attr in OPTIMIZER_METHODS and owner is not None:
            self.step.optimizer_calls.append(OptimizerCall(
                line=self._line(node), statement=self._statement, method=attr, optimizer_text=owner,
                call=node, reads=names_read(node)))
            if attr == "minimize":
                self._add_minimize(node, owner)
        root, attrs = root_and_attrs(node.func)
        if root is not None and not is_tape_call(node):
            training = keyword(node, "training")
            self.step.model_calls.append(ModelCall(
                line=self._line(node), text=self.step.code(node), func_text=self.step.code(node.func),
                root=root, attrs=attrs, training=None if training is None else self.step.code(training),
                statement=self._statement))
        return True

    def _add_minimize(self, node, optimizer):
        """`optimizer.minimize(loss, var_list, tape=tape)` (tf_keras) differentiates `loss` itself."""
        target = positional(node, 0) or keyword(node, "loss")
        sources = positional(node, 1) or keyword(node, "var_list")
        tape = keyword(node, "tape")
        if target is None or sources is None:
            return
        self.step.gradients.append(GradientCall(
            index=len(self.step.gradients), tape=dotted(tape) if tape is not None else None, line=self._line(node),
            statement=self._statement, call=node, target=target, sources=sources,
            target_text=self.step.code(target), sources_text=self.step.code(sources), results=(),
            enclosing_tapes=tuple(self._tapes), kind="objective", minimize=optimizer))

    def _add_gradient(self, node, tape):
        target = positional(node, 0) or keyword(node, "target")
        sources = positional(node, 1) or keyword(node, "sources")
        if target is None or sources is None:
            return
        stmt = self.step.statements[self._statement]
        self.step.gradients.append(GradientCall(
            index=len(self.step.gradients), tape=tape, line=self._line(node), statement=self._statement,
            call=node, target=target, sources=sources, target_text=self.step.code(target),
            sources_text=self.step.code(sources), results=stmt.assigned, enclosing_tapes=tuple(self._tapes)))


# ---------------------------------------------------------------- entry points
def read_function(fn, qualname: Optional[str] = None) -> StepSource:
    """Read a live function (a `tf.function` is read through the Python function it wraps)."""
    fn = unwrap(fn)
    try:
        lines, first = inspect.getsourcelines(fn)
        path = inspect.getsourcefile(fn)
    except (OSError, TypeError) as exc:
        raise SourceUnavailable(f"the source of {getattr(fn, '__qualname__', fn)!r} cannot be read "
                                f"({exc})") from exc
    return read_source("".join(lines), fn.__name__, path=path, first_line=first,
                       qualname=qualname or fn.__qualname__)


class SourceUnavailable(LookupError):
    """The function's source cannot be read (built in, defined in a REPL, compiled)."""


def unwrap(fn):
    """The Python function behind a `tf.function`, a bound method or a `functools.wraps` chain."""
    seen = set()
    while id(fn) not in seen:
        seen.add(id(fn))
        inner = getattr(fn, "python_function", None) or getattr(fn, "__func__", None) \
            or getattr(fn, "__wrapped__", None)
        if inner is None:
            break
        fn = inner
    return fn


def read_source(source: str, name: str, *, path: Optional[str] = None, first_line: int = 1,
                qualname: Optional[str] = None) -> StepSource:
    """Parse `source` (one function definition, possibly indented) and gather its structure."""
    text = textwrap.dedent(source)
    if not text.endswith("\n"):
        text += "\n"
    module = cst.parse_module(text)
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    positions = wrapper.resolve(PositionProvider)
    funcs = [n for n in module.body if isinstance(n, cst.FunctionDef) and n.name.value == name]
    if not funcs:
        funcs = m.findall(module, m.FunctionDef(name=m.Name(name)))
    if not funcs:
        raise SourceUnavailable(f"no function named {name} in the source")
    func = funcs[0]
    offset = first_line - 1
    step = StepSource(name=name, qualname=qualname or name, file=path, start_line=0, end_line=0,
                      params=_params(func), module=module, function=func, positions=positions, offset=offset)
    step.start_line = positions[func].start.line + offset
    step.end_line = positions[func].end.line + offset
    wrapper.visit(GatherStepVisitor(step))
    bound = set(step.params)
    for s in step.statements:
        bound.update(s.assigned)
    for t in step.tapes:
        bound.add(t.name)
    step.locals = frozenset(bound)
    _classify_gradients(step)
    return step


def _params(func: cst.FunctionDef) -> list:
    p = func.params
    return [x.name.value for x in list(p.posonly_params) + list(p.params)]


def _classify_gradients(step: StepSource):
    """A gradient call is an objective when an optimizer applies its result or it differentiates
    trainable variables; otherwise it is an input gradient (d output / d input)."""
    applied = set()
    for call in step.optimizer_calls:
        applied |= _feeding(step, call.reads, call.statement)
    for g in step.gradients:
        if g.minimize or set(g.results) & applied or _names_variables(g.sources, step, g.statement):
            g.kind = "objective"


def _feeding(step: StepSource, names, before: int, depth: int = 0) -> set:
    """`names` and every name they are computed from (the gradients a projection or a clip combines),
    stopping at the result of a gradient call: what a gradient is taken of does not feed the optimizer."""
    out = set(names)
    if depth > 20:
        return out
    taken = {g.statement for g in step.gradients}
    for name in names:
        for stmt in reversed(step.statements[:before]):
            if name in stmt.assigned:
                if stmt.index not in taken:
                    out |= _feeding(step, stmt.reads - out, stmt.index, depth + 1)
                break
    return out


VARIABLE_ATTRS = TRAINABLE_ATTRS + ("variables", "weights")


def _names_variables(node, step: StepSource, before: int, depth: int = 0) -> bool:
    """`model.trainable_variables`, `[*a.trainable_weights, *b.trainable_weights]`, or a name bound to one."""
    if isinstance(node, cst.Attribute):
        return node.attr.value in VARIABLE_ATTRS
    if isinstance(node, (cst.List, cst.Tuple)):
        return any(_names_variables(el.value, step, before, depth) for el in node.elements)
    if isinstance(node, (cst.StarredElement, cst.Element)):
        return _names_variables(node.value, step, before, depth)
    if isinstance(node, cst.BinaryOperation):
        return _names_variables(node.left, step, before, depth) or _names_variables(node.right, step, before, depth)
    if isinstance(node, cst.Name) and depth < 4:
        for s in reversed(step.statements[:before]):
            if node.value in s.assigned and isinstance(s.node, cst.Assign):
                return _names_variables(s.node.value, step, s.index, depth + 1)
    return False
