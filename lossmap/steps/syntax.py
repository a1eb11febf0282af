"""What the splitter (`lossmap.steps.split`) asks of one expression or statement of the user's step.

Pure reads of libcst nodes: a numeric literal's value, whether an expression is one the splitter opens
(a sum, a scaled term, a Keras loss call), which value a statement assigns to a name (including the loss
of `loss, aux = self.stateless_compute_loss(...)`), the blocks around an assignment, and the texts and
short names the output shows for an addend.
"""
from __future__ import annotations

import ast
import re
from typing import Optional

import libcst as cst
import libcst.matchers as m

from lossmap.steps.read import Statement, StepSource, dotted, last_name, positional

SUM_CALLS = ("add_n", "sum", "reduce_sum", "fsum")
KERAS_LOSS_METHODS = ("compute_loss", "compiled_loss", "_compute_loss")
# Keras loss methods that return (loss, aux): the loss is read where the step unpacks it, `loss, aux = ...`
KERAS_LOSS_PAIR_METHODS = ("stateless_compute_loss",)


def literal_number(node) -> Optional[float]:
    """The value of a numeric literal (signs and arithmetic of literals included), else None."""
    if isinstance(node, (cst.Integer, cst.Float)):
        return float(ast.literal_eval(node.value))
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, (cst.Minus, cst.Plus)):
        inner = literal_number(node.expression)
        if inner is None:
            return None
        return -inner if isinstance(node.operator, cst.Minus) else inner
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, (cst.Multiply, cst.Divide)):
        a, b = literal_number(node.left), literal_number(node.right)
        if a is None or b is None:
            return None
        return a * b if isinstance(node.operator, cst.Multiply) else (a / b if b else None)
    return None


def defaulted_names(step: StepSource) -> set:
    """Parameters with a default value: hyperparameters (`lam=0.1`), not batch tensors."""
    params = step.function.params
    return {p.name.value for p in list(params.params) + list(params.kwonly_params) if p.default is not None}


def is_composite(node) -> bool:
    """An expression the splitter opens: a sum, a signed or scaled expression, a list sum, a Keras loss call."""
    if isinstance(node, (cst.BinaryOperation, cst.UnaryOperation)):
        return True
    if isinstance(node, cst.Call):
        name = last_name(node.func)
        if name in SUM_CALLS:
            arg = positional(node, 0)
            return isinstance(arg, (cst.List, cst.Tuple)) or (isinstance(arg, cst.Attribute) and arg.attr.value == "losses")
        return isinstance(node.func, cst.Attribute) and name in KERAS_LOSS_METHODS
    return False


def one_line(code: str) -> str:
    """An expression written over several lines, as one line (a call's arguments wrapped by the author)."""
    if "\n" not in code:
        return code
    code = re.sub(r"([(\[{])\s*\n\s*", r"\1", code)
    code = re.sub(r",?\s*\n\s*([)\]}])", r"\1", code)
    return re.sub(r"\s*\n\s*", " ", code)


def unpacked_keras_loss(stmt: Statement, name: str):
    """The call in `name, aux = self.stateless_compute_loss(...)` when `name` is the first of the pair, else None."""
    node = stmt.node
    if not (isinstance(node, cst.Assign) and len(node.targets) == 1 and isinstance(node.value, cst.Call)):
        return None
    target, call = node.targets[0].target, node.value
    if not (isinstance(target, (cst.Tuple, cst.List)) and len(target.elements) == 2
            and m.matches(target.elements[0].value, m.Name(name))):
        return None
    return call if is_pair_loss_call(call) else None


def is_pair_loss_call(node) -> bool:
    """A call of a Keras loss method that returns (loss, aux): `self.stateless_compute_loss(...)`."""
    return isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and \
        node.func.attr.value in KERAS_LOSS_PAIR_METHODS


def assigned_value(stmt: Statement, name: str):
    node = stmt.node
    if isinstance(node, cst.Assign) and len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name):
        return node.value
    if isinstance(node, cst.AnnAssign) and isinstance(node.target, cst.Name) and node.value is not None:
        return node.value
    if isinstance(node, cst.AugAssign) and isinstance(node.target, cst.Name):
        return node.value
    return None  # tuple unpacking, `for` targets, ...: one value


def inner_blocks(stmt: Statement, use: Statement) -> tuple:
    """The loops and branches around `stmt` that do not also enclose `use`."""
    common = 0
    while common < min(len(stmt.blocks), len(use.blocks)) and stmt.blocks[common] == use.blocks[common]:
        common += 1
    return stmt.blocks[common:]


def expression_text(coef_texts, value_text) -> str:
    sign = ""
    parts = []
    for text, op in coef_texts:
        if op == "neg":
            sign = "" if sign else "-"
        elif op == "mul":
            parts.append(f"{text} * ")
    tail = "".join(f" / {text}" for text, op in coef_texts if op == "div")
    return f"{sign}{''.join(parts)}{value_text}{tail}"


def short_name(node, text, kind, keras_method) -> str:
    if kind == "keras_loss":
        return keras_method
    if kind == "model_losses":
        return "model.losses"
    name = dotted(node)
    if name is not None:
        return name.split(".")[-1] if name.startswith("self.") else name
    if isinstance(node, cst.Call):
        called = dotted(node.func)
        if called is not None:
            return called.split(".")[-1]
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in text)
    return "_".join(p for p in cleaned.split("_") if p)[:40] or "term"
