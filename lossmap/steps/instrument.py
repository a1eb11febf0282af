"""A rewritten copy of the user's step: the same code, with each addend passed through a recorder.

Every wrapper returns what it is given (`__lm__.value(ids, x)` is `x`), so the copy computes
exactly what the step computes, operation for operation. The transformer is kept apart
from the gathering visitors (libcst's codemod split): it only replaces the nodes the
reader and the splitter pointed at.

- `tf.GradientTape(...)` in a `with` -> `__lm__.tape(i, tf.GradientTape, ...)` (made persistent
  so that each term's gradient can be taken on the user's own tape);
- `<tape>.gradient(t, s, ...)` -> `__lm__.gradient(i, <tape>, t, s, ...)`; torch's `t.backward(...)` ->
  `__lm__.backward(i, t.backward, ...)`;
- an addend's value `x` -> `__lm__.value(ids, x)`; a coefficient `c` -> `__lm__.coef(i, c)`;
  the factors of a product the run decides between -> `__lm__.factor(i, side, x)`;
- `self.compute_loss(...)` -> `__lm__.keras_loss(ids, self.compute_loss, ...)`;
  `model.losses` inside `sum(model.losses)` -> `__lm__.losses(ids, model.losses)`;
- `return x` -> `return __lm__.returned(x)`; decorators (`@tf.function`) are dropped: the copy runs eagerly.

The copy is compiled with the user's file name and line numbers, and built with the
function's own globals and closure (plus one cell for the recorder), so names resolve as
they do in the original, `super()` included.
"""
from __future__ import annotations

import ast
import types

import libcst as cst

from lossmap.steps.read import StepSource
from lossmap.steps.split import Split

RECORDER = "__lm__"


def _lm(method: str) -> cst.Attribute:
    return cst.Attribute(value=cst.Name(RECORDER), attr=cst.Name(method))


def _ids(ids) -> cst.BaseExpression:
    ids = tuple(ids)
    return cst.Tuple([cst.Element(cst.Integer(str(i))) for i in ids]) if len(ids) != 1 else \
        cst.Tuple([cst.Element(cst.Integer(str(ids[0])))])


def _wrap(method: str, *lead):
    def wrap(node):
        return cst.Call(func=_lm(method), args=[cst.Arg(x) for x in lead] + [cst.Arg(_bare(node))])
    return wrap


def _bare(node):
    """The node without its own parentheses: it becomes a call argument, which needs none (a tuple does)."""
    if isinstance(node, cst.Tuple):
        return node.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    if hasattr(node, "lpar") and node.lpar:
        return node.with_changes(lpar=[], rpar=[])
    return node


def _prefix_call(method: str, *lead):
    """`f(a, b)` -> `__lm__.<method>(*lead, f, a, b)`."""
    def wrap(node: cst.Call):
        return node.with_changes(func=_lm(method), args=[cst.Arg(x) for x in lead] + [cst.Arg(node.func)]
                                 + list(node.args))
    return wrap


class _Rewriter(cst.CSTTransformer):
    def __init__(self, plan: dict, function: cst.FunctionDef):
        super().__init__()
        self.plan = plan  # id(original node) -> [wrap functions], innermost first
        self.function = function

    def on_leave(self, original, updated):
        for wrap in self.plan.get(id(original), ()):
            updated = wrap(updated)
        if original is self.function:
            updated = updated.with_changes(decorators=[])
        return updated


def plan(step: StepSource, parts: Split) -> dict:
    """Which node gets which wrapper."""
    out: dict = {}

    def add(node, wrap):
        out.setdefault(id(node), []).append(wrap)

    for tape in step.tapes:
        add(tape.call, _prefix_call("tape", cst.Integer(str(tape.index))))
    for g in step.gradients:
        recorded_as = "minimize" if g.minimize else getattr(g, "recorded_as", None)  # backward: an engine's
        add(g.call, _prefix_call(recorded_as, cst.Integer(str(g.index))) if recorded_as else _gradient_call(g.index))
    by_node: dict = {}
    for a in parts.addends:
        by_node.setdefault(id(a.value_node), []).append(a)
    for addends in by_node.values():
        first = addends[0]
        ids = [a.id for a in addends]
        if first.augmented is not None:
            add(first.augmented, _expand_augmented(ids))
            continue
        if first.kind == "keras_loss":
            add(first.value_node, _prefix_call("keras_loss", _ids(ids)))
            continue
        if first.kind == "model_losses":
            losses = first.value_node.args[0].value
            add(losses, _wrap("losses", _ids(ids)))
        if first.undecided is not None:
            for side, factor in enumerate(first.undecided):
                add(factor, _wrap("factor", _ids(ids), cst.Integer(str(side))))
        add(first.value_node, _wrap("value", _ids(ids)))
    for c in parts.coefficients:
        add(c.node, _wrap("coef", cst.Integer(str(c.id))))
    for index in step.returns:
        ret = step.statements[index].node
        if ret.value is not None:
            add(ret.value, _wrap("returned_value"))
    return out


def _expand_augmented(ids):
    """`name += x` -> `name = __lm__.value(ids, name) + (x)` (`-=` alike): the name's earlier value recorded."""
    def wrap(node: cst.AugAssign):
        op = cst.Add() if isinstance(node.operator, cst.AddAssign) else cst.Subtract()
        left = cst.Call(func=_lm("value"), args=[cst.Arg(_ids(ids)), cst.Arg(node.target)])
        right = node.value.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()]) \
            if hasattr(node.value, "lpar") and not node.value.lpar else node.value
        return cst.Assign(targets=[cst.AssignTarget(node.target)],
                          value=cst.BinaryOperation(left=left, operator=op, right=right))
    return wrap


def _gradient_call(index: int):
    def wrap(node: cst.Call):
        tape = node.func.value
        return node.with_changes(func=_lm("gradient"), args=[cst.Arg(cst.Integer(str(index))), cst.Arg(tape)]
                                 + list(node.args))
    return wrap


def rewrite(step: StepSource, parts: Split) -> str:
    """The instrumented function's source (dedented, the same lines as the original)."""
    new_module = step.module.visit(_Rewriter(plan(step, parts), step.function))
    return new_module.code


def build(fn, step: StepSource, source: str, recorder) -> types.FunctionType:
    """Compile `source` (the rewritten `fn`) into a function with `fn`'s globals and closure.

    The factory around it declares the original free variables (so `super()` and closures
    compile as in the original) and the recorder; the code then gets `fn`'s own cells.
    """
    free = tuple(fn.__code__.co_freevars)
    header = ["def __lm_factory__():"] + [f"    {name} = None" for name in free + (RECORDER,)]
    body = "\n".join("    " + line if line.strip() else line for line in source.splitlines())
    tree = ast.parse("\n".join(header) + "\n" + body + f"\n    return {step.name}\n")
    factory = tree.body[0]
    inner = next(n for n in factory.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    def_line = step.line_of(step.function.name)
    shift = def_line - inner.lineno
    for node in ast.walk(inner):
        if hasattr(node, "lineno"):
            node.lineno += shift
            if getattr(node, "end_lineno", None) is not None:
                node.end_lineno += shift
    code = compile(tree, step.file or "<step>", "exec")
    namespace: dict = {}
    exec(code, {"__builtins__": __builtins__}, namespace)  # defines the factory only
    made = namespace["__lm_factory__"]()
    cells = dict(zip(free, fn.__closure__ or ()))
    cells[RECORDER] = types.CellType(recorder)
    closure = tuple(cells[name] for name in made.__code__.co_freevars)
    new = types.FunctionType(made.__code__, fn.__globals__, fn.__name__, fn.__defaults__, closure)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__qualname__ = fn.__qualname__
    new.__module__ = fn.__module__
    return new
