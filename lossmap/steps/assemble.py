"""Turn one recorded run of a custom step into the `Term`s every later stage reads.

Custom addends become `kind: "custom"` terms (valued by the user's own code, so `opaque`),
with their expression, the line that computes them and their objective. A call of
`compute_loss` / `compiled_loss` expands into the compile-time inventory, valued
independently by the engine's NumPy rules as on the compiled path; a read of
`model.losses` into its regularizer, activity and add_loss terms. A coefficient in front
multiplies the weight of every term it covers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import libcst as cst
import numpy as np

from lossmap.analysis import Term
from lossmap.engines.base import Capture
from lossmap.engines.common.helpers import as_numpy
from lossmap.steps.run import Decomposition, _returned_objectives
from lossmap.terms import additional_term, compiled_term


@dataclass
class AssembledTerm:
    term: Term
    key: tuple  # where its gradient is in Attribution.term_gradients[objective]
    multiplier: float  # recorded gradient x multiplier = gradient of the term's contribution
    objective: int  # the outer objective it belongs to
    local_variable: Optional[str] = None  # weight regularizers: the one variable it reaches
    recorded: Optional[float] = None  # the contribution as the step computed it (custom terms)
    gradient: Optional[dict] = None  # the gradient of its contribution, once taken (analyse.term_gradient)


@dataclass
class Assembled:
    terms: list = field(default_factory=list)  # [AssembledTerm]
    unsplit: list = field(default_factory=list)  # [(term id or None, reason)]
    notes: list = field(default_factory=list)
    captures: list = field(default_factory=list)  # the Capture of every Keras expansion
    unexpanded: list = field(default_factory=list)  # Keras loss calls that stayed one term (their text)


def scalar_value(value) -> float:
    """A recorded value as one float (a non-scalar target is differentiated as its sum)."""
    arr = np.asarray(as_numpy(value, copy=False), np.float64)
    return float(arr) if arr.ndim == 0 else float(np.sum(arr))


class Assembler:
    def __init__(self, eng, objective_label):
        self.eng = eng
        self.objective_label = objective_label  # outer objective id -> its id in the output (None when one)
        self.out = Assembled()

    def objective(self, d: Decomposition, objective_id: int, weight=1.0, key=(), outer=None):
        """Every addend of one objective of `d`; `outer` is the outer objective id (for nested calls)."""
        outer = objective_id if outer is None else outer
        parts = d.parts
        for addend_id in parts.objectives[objective_id].addends:
            addend = parts.addends[addend_id]
            w = weight * weight_of(d.recorder, addend)
            self.addend(d, addend, w, key + (addend_id,), outer)

    def addend(self, d: Decomposition, addend, weight, key, outer):
        rec = d.recorder
        call = rec.keras_calls.get(addend.id) if addend.kind == "keras_loss" else None
        if call is not None and isinstance(call.expansion, Decomposition):
            for objective_id in _returned_objectives(call.expansion):
                self.objective(call.expansion, objective_id, weight, key, outer)
            return
        if call is not None and call.expansion is not None:
            return self.keras_expansion(d, addend, call, weight, key, outer)
        if call is not None:
            self.out.unexpanded.append(addend.value_text)
            self.out.unsplit.append((None, f"{addend.value_text} could not be opened into Keras's terms "
                                           f"({call.error})"))
        if addend.kind == "model_losses" and addend.id in rec.losses_captures:
            return self.model_losses(d, addend, rec.losses_captures[addend.id], rec.losses_lists[addend.id],
                                     weight, key, outer)
        self.custom(d, addend, weight, key, outer)

    # ------------------------------------------------------------ custom addends
    def custom(self, d: Decomposition, addend, weight, key, outer):
        rec = d.recorder
        recorded = rec.values.get(addend.id)
        value, weight, expression, multiplier = decide_factors(rec, addend, recorded, weight)
        evaluated = rec.counts.get(("value", addend.id), 0)
        steps = [f"{addend.value_text} as the step computes it (line {addend.value_line})"]
        if weight != 1.0:
            steps.append(f"times {weight:g}")
        if evaluated > 1:
            steps.append(f"evaluated {evaluated} times in one step: the last value is shown")
        term = Term(
            id=f"custom/{addend.name}", kind="custom", output=None, layer=None, variable=None, fn=None,
            config=None, value=value, weight=weight, contribution=value * weight, opaque=True,
            shape=list(np.shape(recorded)) if recorded is not None else None, keras_value=value, steps=steps,
            origin={"module": d.fn.__module__, "qualname": d.fn.__qualname__, "file": d.step.file,
                    "line": addend.value_line, "kind": "function"})
        self._place(term, d, addend, expression, addend.value_line, outer)
        self.out.terms.append(AssembledTerm(term, ("addend",) + key, multiplier, outer, recorded=value * weight))
        if recorded is None:
            self.out.unsplit.append((term.id, f"{addend.value_text} (line {addend.line}) was not evaluated "
                                              "when the step ran"))
        elif addend.reason:
            self.out.unsplit.append((term.id, addend.reason))

    # ------------------------------------------------------------ Keras's own terms
    def keras_expansion(self, d, addend, call, weight, key, outer):
        expansion = call.expansion
        capture = expansion.capture
        self.out.captures.append(capture)
        terms = [compiled_term(c, capture, self.eng.rules) for c in capture.compiled]
        terms += [additional_term(a, capture, self.eng.rules) for a in capture.additional]
        unweighted = self.eng.rules.add_terms(terms)
        shared = len(expansion.tensors)
        for i, t in enumerate(terms):
            self._scale(t, weight, d, addend, outer)
            if i < shared:
                self.out.terms.append(AssembledTerm(t, ("keras",) + key + (i,), weight, outer))
            else:
                self.out.terms.append(AssembledTerm(t, ("regularizers",) + key, weight, outer,
                                                    local_variable=t.variable))
        self.out.notes.append(f"{addend.value_text} (line {addend.line}) = {scalar_value(call.result):.7g} as "
                              f"Keras computes it; its {len(terms)} term(s), reproduced, add up to {unweighted:.7g}")

    def model_losses(self, d, addend, captures, tensors, weight, key, outer):
        capture = Capture(compiled=[], additional=list(captures), compute_loss=None, compute_loss_error=None,
                          dtype="float32", epsilon=1e-7)
        for i, a in enumerate(captures):
            t = additional_term(a, capture, self.eng.rules)
            self._scale(t, weight, d, addend, outer)
            local = a.variable if a.kind == "weight_regularizer" else None
            grad_key = ("losses_regularizers",) + key if local else ("losses",) + key + (i,)
            self.out.terms.append(AssembledTerm(t, grad_key, weight, outer, local_variable=local))

    # ------------------------------------------------------------ common fields
    def _scale(self, t: Term, weight, d, addend, outer):
        t.weight = t.weight * weight
        t.contribution = t.value * t.weight
        if weight != 1.0:
            t.steps.append(f"times {weight:g}, the step's coefficient on {addend.value_text} (line {addend.line})")
        self._place(t, d, addend, addend.expression, addend.line, outer)

    def _place(self, t: Term, d, addend, expression, line, outer):
        t.expression = expression
        t.source = {"file": d.step.file, "line": line, "function": d.fn.__qualname__}
        t.objective = self.objective_label(outer)


def weight_of(rec, addend) -> float:
    """The addend's sign and numbers times the coefficients the run recorded."""
    w = addend.literal
    for coef_id, op in addend.factors:
        c = rec.coefs.get(coef_id)
        c = float(np.asarray(as_numpy(c, copy=False), np.float64)) if c is not None and np.size(c) == 1 else math.nan
        w = w * c if op == "mul" else w / c
    return w


def decide_factors(rec, addend, recorded, weight):
    """(value, weight, expression, gradient multiplier) of an addend.

    For a product only the run could tell apart, a Python number, a NumPy scalar or a
    non-trainable scalar variable is the coefficient; the recorded tensor is then the whole
    product, so its gradient is multiplied by the outer weight alone."""
    value = scalar_value(recorded) if recorded is not None else math.nan
    if addend.undecided is None or addend.id not in rec.factors:
        return value, weight, addend.expression, weight
    factors = rec.factors[addend.id]
    texts = [_code(node) for node in addend.undecided]
    for side in (0, 1):
        coef, other = factors.get(side), factors.get(1 - side)
        if _is_constant(coef) and not _is_constant(other):
            c = float(np.asarray(as_numpy(coef, copy=False), np.float64))
            return scalar_value(other), weight * c, f"{texts[side]} * {texts[1 - side]}", weight
    return value, weight, addend.expression, weight


def _code(node) -> str:
    return cst.Module(body=[]).code_for_node(node).strip()


def _is_constant(value) -> bool:
    """A Python or NumPy number, or a scalar variable that does not train."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return True
    return getattr(value, "trainable", None) is False and np.size(as_numpy(value, copy=False)) == 1
