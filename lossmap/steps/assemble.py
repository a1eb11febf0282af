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
from typing import Any, Optional

import numpy as np

from lossmap.analysis import Term
from lossmap.steps.run import Decomposition, _returned_objectives
from lossmap.terms import additional_term, compiled_term


@dataclass
class AssembledTerm:
    term: Term
    key: tuple  # the key of its gradient in StepRun.term_gradients
    multiplier: float  # what the recorded gradient is multiplied by to be the gradient of the contribution
    recorded: Optional[float]  # the value the step itself computed for this term's contribution
    local_variable: Optional[str] = None  # weight regularizers: the one variable it reaches


@dataclass
class Assembled:
    terms: list = field(default_factory=list)  # [AssembledTerm]
    unsplit: list = field(default_factory=list)  # [(term id, reason)]
    notes: list = field(default_factory=list)


def scalar_value(value) -> float:
    arr = np.asarray(value, np.float64)
    return float(arr) if arr.ndim == 0 else float(np.sum(arr))


class Assembler:
    def __init__(self, eng, model, probe, objective_label):
        self.eng = eng
        self.model = model
        self.probe = probe
        self.objective_label = objective_label  # objective id -> its id in the output (None when one)
        self.out = Assembled()

    # ------------------------------------------------------------ entry
    def objective(self, decomposition: Decomposition, objective_id: int, weight=1.0, key=(), outer=None):
        parts = decomposition.parts
        for addend_id in parts.objectives[objective_id].addends:
            addend = parts.addends[addend_id]
            w = weight * self.weight_of(decomposition, addend)
            self.addend(decomposition, addend, w, key + (addend_id,), outer)

    def addend(self, decomposition: Decomposition, addend, weight, key, outer):
        rec = decomposition.recorder
        if addend.kind == "keras_loss" and addend.id in rec.keras_calls:
            call = rec.keras_calls[addend.id]
            if isinstance(call.expansion, Decomposition):
                inner = call.expansion
                for objective_id in _returned_objectives(inner):
                    self.objective(inner, objective_id, weight, key, outer or (decomposition, addend))
                return
            if call.expansion is not None:
                self.keras_expansion(decomposition, addend, call, weight, key)
                return
            self.out.unsplit.append((None, f"{addend.value_text} could not be expanded into Keras's terms "
                                           f"({call.error})"))
        if addend.kind == "model_losses" and addend.id in rec.losses_lists:
            self.model_losses(decomposition, addend, rec.losses_lists[addend.id], weight, key)
            return
        self.custom(decomposition, addend, weight, key)

    # ------------------------------------------------------------ the three kinds
    def custom(self, decomposition, addend, weight, key):
        rec = decomposition.recorder
        step = decomposition.step
        recorded = rec.values.get(addend.id)
        value, weight, expression = self.decide_factors(rec, addend, recorded, weight)
        evaluated = rec.counts.get(("value", addend.id), 0)
        steps = [f"{addend.value_text} as the step computes it (line {addend.value_line})"]
        if weight != 1.0:
            steps.append(f"times {weight:g} ({_coefficient_words(addend)})")
        if evaluated > 1:
            steps.append(f"evaluated {evaluated} times in one step: the last value is shown")
        term = Term(
            id=f"custom/{addend.name}", kind="custom", output=None, layer=None, variable=None,
            fn=None, config=None, value=value, weight=weight, contribution=value * weight, opaque=True,
            shape=list(np.shape(recorded)) if recorded is not None else None, keras_value=value,
            steps=steps, origin={"module": decomposition.fn.__module__, "qualname": decomposition.fn.__qualname__,
                                 "file": step.file, "line": addend.value_line, "kind": "function"})
        term.expression = expression
        term.source = {"file": step.file, "line": addend.value_line, "function": decomposition.fn.__qualname__}
        term.objective = self.objective_label(addend.objective)
        self.out.terms.append(AssembledTerm(term, ("addend",) + key, weight, value * weight))
        if recorded is None:
            self.out.unsplit.append((term.id, f"{addend.value_text} (line {addend.line}) was never evaluated "
                                              "when the step ran"))
        elif addend.reason:
            self.out.unsplit.append((term.id, addend.reason))

    def keras_expansion(self, decomposition, addend, call, weight, key):
        expansion = call.expansion
        capture = expansion.capture
        terms = [compiled_term(c, capture, self.eng.rules) for c in capture.compiled]
        terms += [additional_term(a, capture, self.eng.rules) for a in capture.additional]
        shared = len(expansion.tensors)
        for i, t in enumerate(terms):
            self._scale(t, weight, decomposition, addend)
            if i < shared:
                self.out.terms.append(AssembledTerm(t, ("keras",) + key + (i,), weight, None))
            else:
                self.out.terms.append(AssembledTerm(t, ("regularizers",) + key, weight, None,
                                                    local_variable=t.variable))
        result = scalar_value(call.result)
        reproduced = self.eng.rules.add_terms(_unscaled(terms, weight))
        self.out.terms[-len(terms)].recorded = None
        self.out.notes.append(f"{addend.value_text} (line {addend.line}) = {result:.7g}, "
                              f"expanded into {len(terms)} term(s) adding up to {reproduced:.7g}")

    def model_losses(self, decomposition, addend, losses, weight, key):
        additional = self.eng.additional_for(self.model, losses, self.probe)
        from lossmap.engines.base import Capture

        capture = Capture(compiled=[], additional=additional, compute_loss=None, compute_loss_error=None,
                          dtype="float32", epsilon=1e-7)
        for i, a in enumerate(additional):
            t = additional_term(a, capture, self.eng.rules)
            self._scale(t, weight, decomposition, addend)
            self.out.terms.append(AssembledTerm(t, ("losses",) + key + (i,), weight,
                                                weight * scalar_value(losses[i])))

    # ------------------------------------------------------------ weights
    def weight_of(self, decomposition, addend) -> float:
        rec = decomposition.recorder
        w = addend.literal
        for coef_id, op in addend.factors:
            c = rec.coefs.get(coef_id)
            c = float(np.asarray(c, np.float64)) if c is not None and np.size(c) == 1 else math.nan
            w = w * c if op == "mul" else w / c
        return w

    def decide_factors(self, rec, addend, recorded, weight):
        """A product whose coefficient only the run could tell: a number, a NumPy scalar or a
        non-trainable variable is the coefficient; otherwise the product is the value."""
        value = scalar_value(recorded) if recorded is not None else math.nan
        if addend.undecided is None or addend.id not in rec.factors:
            return value, weight, addend.expression
        factors = rec.factors[addend.id]
        for side in (0, 1):
            coef, other = factors.get(side), factors.get(1 - side)
            if _is_constant(coef) and not _is_constant(other):
                c = float(np.asarray(coef, np.float64))
                texts = [self_code(addend, 0), self_code(addend, 1)]
                return scalar_value(other), weight * c, f"{texts[side]} * {texts[1 - side]}"
        return value, weight, addend.expression

    def _scale(self, t: Term, weight, decomposition, addend):
        t.weight = t.weight * weight
        t.contribution = t.value * t.weight
        if weight != 1.0:
            t.steps.append(f"times {weight:g} where the step uses it ({addend.expression}, line {addend.line})")
        t.expression = addend.expression
        t.source = {"file": decomposition.step.file, "line": addend.line, "function": decomposition.fn.__qualname__}
        t.objective = self.objective_label(addend.objective)


def self_code(addend, side) -> str:
    node = addend.undecided[side]
    import libcst as cst

    return cst.Module(body=[]).code_for_node(node).strip()


def _unscaled(terms, weight):
    out = []
    for t in terms:
        copy = Term(**{k: getattr(t, k) for k in Term.__dataclass_fields__})
        copy.contribution = t.contribution / weight if weight else t.contribution
        out.append(copy)
    return out


def _is_constant(value) -> bool:
    """A Python or NumPy number, or a scalar variable that does not train."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return True
    trainable = getattr(value, "trainable", None)
    return trainable is False and np.size(np.asarray(value)) == 1


def _coefficient_words(addend) -> str:
    return addend.expression.replace(addend.value_text, "").strip(" *") or "its sign"
