"""Split each differentiated loss of a step into addends, following assignments back from the target.

Rules (each is structure, read with libcst; nothing is guessed from names):
- `a + b`, `a - b`, `-a`, `a += b`, `a -= b` split; a subtracted addend gets a negative weight;
- `c * x`, `x * c`, `x / c` make `c` a coefficient when `c` is a number, or a name the step
  does not compute (a parameter with a default, a global, `self.alpha`); a coefficient
  distributes over a sum (`0.5 * (a + b)` gives two addends). When both factors could be
  the coefficient, the run decides (`undecided`): a Python number, a NumPy scalar or a
  non-trainable variable is one;
- `tf.add_n([...])`, `sum([...])`, `tf.reduce_sum([...])` split into their elements;
- `tf.reduce_sum(model.losses)`, `sum(self.losses)`, `tf.add_n(model.losses)` become one
  `model_losses` addend, expanded later into regularizer, activity and add_loss terms;
- calls of `compute_loss`, `compiled_loss` or `_compute_loss` become one `keras_loss` addend,
  expanded later into the compile-time inventory;
- a name is followed to the statement that last bound it before its use, when that
  statement is not inside a loop or branch the use is not in; otherwise it is one addend
  with the reason it was not split further.

    >>> from lossmap.steps.read import read_source
    >>> step = read_source('''
    ... def train_step(self, data):
    ...     x, y = data
    ...     with tf.GradientTape() as tape:
    ...         y_pred = self(x, training=True)
    ...         data_loss = self.compute_loss(x, y, y_pred)
    ...         loss_x = tf.reduce_mean(tf.square(y_pred - x))
    ...         total = data_loss + self.a * loss_x - 0.5 * (l1 + l2)
    ...     grads = tape.gradient(total, self.trainable_variables)
    ...     self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
    ... ''', "train_step")
    >>> [(a.kind, a.expression, a.literal) for a in split(step).addends]
    [('keras_loss', 'self.compute_loss(x, y, y_pred)', 1.0), ('custom', 'self.a * loss_x', 1.0), ('custom', '-0.5 * l1', -0.5), ('custom', '-0.5 * l2', -0.5)]
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import libcst as cst

from lossmap.steps.read import StepSource, last_name, names_read, positional
from lossmap.steps.syntax import (KERAS_LOSS_METHODS, SUM_CALLS, assigned_value, defaulted_names, expression_text,
                                  inner_blocks, is_composite, is_pair_loss_call, literal_number, one_line,
                                  short_name, unpacked_keras_loss)

MAX_DEPTH = 40  # names followed back through at most this many assignments


@dataclass
class Coefficient:
    id: int
    text: str
    line: int
    node: Optional[cst.CSTNode]  # recorded at run time; None for a number in the source
    literal: Optional[float] = None


@dataclass
class Addend:
    id: int
    objective: int
    kind: str  # "custom" | "keras_loss" | "model_losses"
    expression: str  # as the step writes it, coefficients included ("self.a * loss_x")
    value_text: str  # the value alone ("loss_x")
    name: str  # short name for the term id
    line: int  # where the addend appears in the sum
    value_line: int  # where its value is computed
    statement: int  # the statement holding `value_node`
    literal: float  # sign and numeric coefficients multiplied
    factors: list  # [(coefficient id, "mul" | "div")]: coefficients known at run time
    value_node: cst.CSTNode
    undecided: Optional[tuple] = None  # (left, right) factors of a product the run decides between
    keras_method: Optional[str] = None
    reason: Optional[str] = None  # why this addend was not split further
    augmented: Optional[cst.AugAssign] = None  # `name += x` whose `name` is the value: rewritten `name = name + x`


@dataclass
class Objective:
    id: int
    gradient: object  # read.GradientCall; None for the value a loss function returns
    addends: list = field(default_factory=list)  # addend ids
    returned: object = None  # the returned expression (split_returns)
    more: list = field(default_factory=list)  # further gradient calls of the same loss (other variables)

    def gradient_calls(self) -> list:
        return ([self.gradient] if self.gradient is not None else []) + self.more


@dataclass
class Split:
    objectives: list
    addends: list
    coefficients: list

    def addend(self, addend_id: int) -> Addend:
        return self.addends[addend_id]


@dataclass
class _Context:
    objective: int
    statement: int  # where the expression being split is
    literal: float = 1.0
    factors: tuple = ()
    coef_texts: tuple = ()  # (text, op) for the expression shown
    depth: int = 0


class _Splitter:
    def __init__(self, step: StepSource):
        self.step = step
        self.addends: list = []
        self.coefficients: list = []
        self._coef_by_node: dict = {}

    # ------------------------------------------------------------ entry
    def objective(self, g, objective_id: int) -> list:
        ctx = _Context(objective=objective_id, statement=g.statement)
        return self.expand(g.target, ctx)

    def expand(self, node, ctx: _Context) -> list:
        if ctx.depth > MAX_DEPTH:
            return [self.leaf(node, ctx, reason="the sum is nested too deeply to follow")]
        for rule in (self._unary, self._add, self._product, self._sum_call, self._keras_loss,
                     self._model_losses, self._name):
            out = rule(node, ctx)
            if out is not None:
                return out
        return [self.leaf(node, ctx)]

    # ------------------------------------------------------------ rules: each returns None when it does not apply
    def _unary(self, node, ctx):
        if not isinstance(node, cst.UnaryOperation):
            return None
        if isinstance(node.operator, cst.Minus):
            return self.expand(node.expression, _scaled(ctx, -1.0, ("-", "neg")))
        if isinstance(node.operator, cst.Plus):
            return self.expand(node.expression, ctx)
        return None

    def _add(self, node, ctx):
        if not isinstance(node, cst.BinaryOperation) or not isinstance(node.operator, (cst.Add, cst.Subtract)):
            return None
        right = ctx if isinstance(node.operator, cst.Add) else _scaled(ctx, -1.0, ("-", "neg"))
        return self.expand(node.left, _deeper(ctx)) + self.expand(node.right, _deeper(right))

    def _product(self, node, ctx):
        if not isinstance(node, cst.BinaryOperation) or not isinstance(node.operator, (cst.Multiply, cst.Divide)):
            return None
        left, right = node.left, node.right
        if isinstance(node.operator, cst.Divide):
            if self._coefficient_kind(right, ctx) in ("number", "outside"):
                return self.expand(left, self._with_coefficient(right, "div", ctx))
            return None
        kinds = (self._coefficient_kind(left, ctx), self._coefficient_kind(right, ctx))
        for coef, value, (k_coef, k_value) in ((left, right, kinds), (right, left, kinds[::-1])):
            if k_coef == "number" and k_value != "number":
                return self.expand(value, self._with_coefficient(coef, "mul", ctx))
        for coef, value, (k_coef, k_value) in ((left, right, kinds), (right, left, kinds[::-1])):
            if k_coef == "outside" and k_value == "computed":
                return self.expand(value, self._with_coefficient(coef, "mul", ctx))
        if "computed" in kinds and kinds != ("computed", "computed"):
            return None
        # both factors could be the coefficient: one addend, the run decides which is which
        return [self.leaf(node, ctx, undecided=(left, right))]

    def _sum_call(self, node, ctx):
        if not isinstance(node, cst.Call) or last_name(node.func) not in SUM_CALLS:
            return None
        arg = positional(node, 0)
        if isinstance(arg, (cst.List, cst.Tuple)) and len(node.args) == 1 and arg.elements and \
                not any(isinstance(el, cst.StarredElement) for el in arg.elements):
            out = []
            for el in arg.elements:
                out += self.expand(el.value, _deeper(ctx))
            return out
        return None

    def _keras_loss(self, node, ctx):
        if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute) and \
                node.func.attr.value in KERAS_LOSS_METHODS:
            return [self.leaf(node, ctx, kind="keras_loss", keras_method=node.func.attr.value)]
        call = self._first_of_pair(node, ctx)
        if call is not None:
            return [self.leaf(call, ctx, kind="keras_loss", keras_method=call.func.attr.value)]
        return None

    def _first_of_pair(self, node, ctx):
        """The Keras call whose loss `node` is: `self.stateless_compute_loss(...)[0]`, or `out[0]` after
        `out = self.stateless_compute_loss(...)`; else None."""
        if not (isinstance(node, cst.Subscript) and len(node.slice) == 1
                and isinstance(node.slice[0].slice, cst.Index) and literal_number(node.slice[0].slice.value) == 0):
            return None
        value = node.value
        if isinstance(value, cst.Name):
            found = self.reaching_definition(value.value, ctx.statement)
            if found is None or inner_blocks(*found):
                return None
            value = assigned_value(found[0], value.value)
        return value if is_pair_loss_call(value) else None

    def _model_losses(self, node, ctx):
        if isinstance(node, cst.Call) and last_name(node.func) in SUM_CALLS and len(node.args) >= 1:
            arg = positional(node, 0)
            if isinstance(arg, cst.Attribute) and arg.attr.value == "losses":
                return [self.leaf(node, ctx, kind="model_losses")]
        return None

    def _name(self, node, ctx):
        if not isinstance(node, cst.Name):
            return None
        found = self.reaching_definition(node.value, ctx.statement)
        if found is None:
            return None  # a parameter or a name from outside: one addend where it is used
        stmt, use = found
        pair = unpacked_keras_loss(stmt, node.value)
        if pair is not None and not inner_blocks(stmt, use):
            return [self.leaf(pair, ctx, kind="keras_loss", keras_method=pair.func.attr.value, value_line=stmt.line)]
        inner = inner_blocks(stmt, use)
        value = assigned_value(stmt, node.value)
        if value is None:
            return [self.leaf(node, ctx, value_line=stmt.line)]
        if inner:
            keyword_, line = inner[0]
            composite = self.splits(value, stmt.index) or isinstance(stmt.node, cst.AugAssign)
            why = (f"accumulated in a `{keyword_}` loop (line {line}), which lossmap does not unroll"
                   if keyword_ in ("for", "while") else f"assigned inside an `{keyword_}` block (line {line})")
            loop = keyword_ in ("for", "while")
            return [self.leaf(node, ctx, value_line=stmt.line, reason=why if composite or not loop else None)]
        if isinstance(stmt.node, cst.AugAssign) or self.splits(value, stmt.index) or \
                self._scaled_name(value, replace(ctx, statement=stmt.index)):
            return self._value_after(stmt, node.value, ctx)
        return [self.leaf(node, ctx, value_line=stmt.line)]

    def _value_after(self, stmt, name: str, ctx):
        """The addends of `name`'s value right after `stmt` (an assignment to it)."""
        at_def = replace(ctx, statement=stmt.index, depth=ctx.depth + 1)
        node = stmt.node
        if isinstance(node, cst.AugAssign):
            op = node.operator
            if not isinstance(op, (cst.AddAssign, cst.SubtractAssign)):
                return [self._augmented_leaf(stmt, at_def)]
            right = at_def if isinstance(op, cst.AddAssign) else _scaled(at_def, -1.0, ("-", "neg"))
            return self._value_before(stmt, name, at_def) + self.expand(node.value, right)
        value = assigned_value(stmt, name)
        if self.splits(value, stmt.index) or self._scaled_name(value, at_def):
            return self.expand(value, at_def)
        addend = self.leaf(value, at_def, value_line=stmt.line)
        addend.name = name
        return [addend]

    def _value_before(self, stmt, name: str, ctx):
        """The addends of `name`'s value just before `stmt` (`name += ...`): its earlier definition, or
        (a parameter, a global, a loop) the name itself, recorded by rewriting `stmt` as `name = name + ...`."""
        found = self.reaching_definition(name, stmt.index)
        if found is not None and not inner_blocks(*found) and assigned_value(found[0], name) is not None:
            return self._value_after(found[0], name, ctx)
        return [self._augmented_leaf(stmt, ctx)]

    def _scaled_name(self, node, ctx) -> bool:
        """`q`, `-q`, `0.5 * q`, `q / n`: another name under a sign or coefficients, which is followed so
        that the term keeps the quantity's own name."""
        if isinstance(node, cst.Name):
            return True
        if isinstance(node, cst.UnaryOperation):
            return self._scaled_name(node.expression, ctx)
        if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, (cst.Multiply, cst.Divide)):
            right_coef = self._coefficient_kind(node.right, ctx) in ("number", "outside")
            left_coef = self._coefficient_kind(node.left, ctx) in ("number", "outside")
            if isinstance(node.operator, cst.Divide):
                return right_coef and self._scaled_name(node.left, ctx)
            return (left_coef and self._scaled_name(node.right, ctx)) or (right_coef and self._scaled_name(node.left, ctx))
        return False

    def _augmented_leaf(self, stmt, ctx):
        addend = self.leaf(stmt.node.target, ctx, value_line=stmt.line)
        addend.augmented = stmt.node
        return addend

    def splits(self, node, statement: int, depth: int = 0) -> bool:
        """Whether `node` opens into more than one addend (or a Keras loss to expand): a name bound to
        a single scaled quantity (`loss_x = 0.5 * tf.reduce_mean(...)`) stays one term, named `loss_x`."""
        if depth > MAX_DEPTH:
            return False
        if isinstance(node, cst.BinaryOperation):
            if isinstance(node.operator, (cst.Add, cst.Subtract)):
                return True
            if isinstance(node.operator, (cst.Multiply, cst.Divide)):
                return self.splits(node.left, statement, depth + 1) or self.splits(node.right, statement, depth + 1)
            return False
        if isinstance(node, cst.UnaryOperation):
            return self.splits(node.expression, statement, depth + 1)
        if isinstance(node, cst.Call):
            return is_composite(node)
        if isinstance(node, cst.Name):
            found = self.reaching_definition(node.value, statement)
            if found is None or inner_blocks(*found):
                return False
            stmt = found[0]
            if isinstance(stmt.node, cst.AugAssign):
                return isinstance(stmt.node.operator, (cst.AddAssign, cst.SubtractAssign))
            value = assigned_value(stmt, node.value)
            return value is not None and self.splits(value, stmt.index, depth + 1)
        return False

    # ------------------------------------------------------------ pieces
    def reaching_definition(self, name: str, before: int):
        """The last statement before `before` that binds `name`, with the statement of the use."""
        use = self.step.statements[before]
        for stmt in reversed(self.step.statements[:before]):
            if name in stmt.assigned:
                return stmt, use
        return None

    def _coefficient_kind(self, node, ctx) -> str:
        """"number" (in the source), "outside" (a value the step does not compute) or "computed"."""
        if literal_number(node) is not None:
            return "number"
        root = node
        while isinstance(root, (cst.Attribute, cst.Subscript)):
            root = root.value
        if isinstance(root, cst.Name) and not isinstance(node, cst.Call):
            computed = root.value in self.step.locals and root.value not in defaulted_names(self.step) \
                and root.value not in ("self",)
            return "computed" if computed else "outside"
        return "computed"

    def _with_coefficient(self, node, op, ctx) -> _Context:
        number = literal_number(node)
        text = self.step.code(node)
        if number is not None:
            value = number if op == "mul" else (1.0 / number if number else float("inf"))
            return replace(ctx, literal=ctx.literal * value, coef_texts=ctx.coef_texts + ((text, op),),
                           depth=ctx.depth + 1)
        coef = self._coef_by_node.get(id(node))
        if coef is None:
            coef = Coefficient(len(self.coefficients), text, self.step.line_of(node), node)
            self.coefficients.append(coef)
            self._coef_by_node[id(node)] = coef
        return replace(ctx, factors=ctx.factors + ((coef.id, op),), coef_texts=ctx.coef_texts + ((text, op),),
                       depth=ctx.depth + 1)

    def leaf(self, node, ctx, *, kind="custom", value_line=None, reason=None, undecided=None,
             keras_method=None) -> Addend:
        value_text = one_line(self.step.code(node))
        line = self.step.line_of(node)
        addend = Addend(
            id=len(self.addends), objective=ctx.objective, kind=kind,
            expression=expression_text(ctx.coef_texts, value_text), value_text=value_text,
            name=short_name(node, value_text, kind, keras_method), line=line,
            value_line=value_line or line, statement=ctx.statement, literal=ctx.literal,
            factors=list(ctx.factors), value_node=node, undecided=undecided, keras_method=keras_method,
            reason=reason)
        self.addends.append(addend)
        return addend


def split(step: StepSource) -> Split:
    """Every objective of `step` (a gradient call that trains variables), split into addends."""
    splitter = _Splitter(step)
    objectives = []
    for g in step.gradients:
        if g.kind != "objective":
            continue
        same = next((o for o in objectives if o.gradient.target_text == g.target_text
                     and _same_value(step, o.gradient, g)), None)
        if same is not None:  # the same loss differentiated for other variables (one head, then the trunk)
            same.more.append(g)
            continue
        objective = Objective(id=len(objectives), gradient=g)
        objective.addends = [a.id for a in splitter.objective(g, objective.id)]
        objectives.append(objective)
    return Split(objectives, splitter.addends, splitter.coefficients)


def _same_value(step: StepSource, a, b) -> bool:
    """Two gradient calls differentiate the same value: no statement between them rebinds a name it reads."""
    names = names_read(a.target)
    first, last = sorted((a.statement, b.statement))
    return not any(set(s.assigned) & names for s in step.statements[first + 1:last])


def split_returns(step: StepSource, first: bool = False) -> Split:
    """A loss function's returned value split into addends (an overridden `compute_loss`): one
    objective per `return`; the run tells which one returned. `first`: the loss is the first item of
    a returned tuple (`jax.value_and_grad(f, has_aux=True)`'s `return loss, aux`)."""
    splitter = _Splitter(step)
    objectives = []
    for index in step.returns:
        ret = step.statements[index].node
        if ret.value is None:
            continue
        value = ret.value.elements[0].value if first and isinstance(ret.value, cst.Tuple) else ret.value
        objective = Objective(id=len(objectives), gradient=None)
        ctx = _Context(objective=objective.id, statement=index)
        objective.addends = [a.id for a in splitter.expand(value, ctx)]
        objective.returned = value
        objectives.append(objective)
    return Split(objectives, splitter.addends, splitter.coefficients)


# ---------------------------------------------------------------- helpers
def _scaled(ctx: _Context, factor: float, text_op) -> _Context:
    return replace(ctx, literal=ctx.literal * factor, coef_texts=ctx.coef_texts + (text_op,))


def _deeper(ctx: _Context) -> _Context:
    return replace(ctx, depth=ctx.depth + 1)


def dependencies(step: StepSource, node, statement: int, limit: int = 200) -> list:
    """The statements `node` (an expression at `statement`) depends on, nearest first."""
    seen, out = set(), []
    frontier = [(names_read(node), statement)]
    while frontier and len(out) < limit:
        names, before = frontier.pop()
        for name in sorted(names):
            for stmt in reversed(step.statements[:before]):
                if name in stmt.assigned:
                    if stmt.index not in seen:
                        seen.add(stmt.index)
                        out.append(stmt)
                        frontier.append((stmt.reads, stmt.index))
                    break
    return out
