"""Run the user's step twice on the same state, batch and seeds: instrumented, then as written.

The instrumented copy records every addend, the target of each gradient call and, at
that moment (before any update), the gradient of each term on the user's own tape. The
real step (the Python function, eagerly; a `tf.function` is run through the function it
wraps) is then run as it is. An `OptimizerSpy` keeps the gradients each run hands to
`apply_gradients`; the state is put back after each run.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

from lossmap.steps.instrument import build, rewrite
from lossmap.steps.record import Recorder
from lossmap.steps.spy import OptimizerSpy


@dataclass
class Decomposition:
    """One function of the user's and its split: the step, or an overridden `compute_loss` it calls."""

    fn: Callable
    step: Any  # read.StepSource
    parts: Any  # split.Split
    kind: str  # "train_step" | "function" | "compute_loss" | "keras_default"
    nested: Optional["Decomposition"] = None  # the model's overridden compute_loss, when the step calls it
    recorder: Optional[Recorder] = None
    instrumented: Optional[Callable] = None
    attribution: Any = None  # the Attribution that took each term's gradient in the instrumented run
    words: Any = None  # .title, .path: how to name a written-out step that is not Keras's own (JAX)
    adapt: Optional[Callable] = None  # the instrumented copy -> what the step calls (JAX: a differentiated function)


@dataclass
class StepRun:
    updates: list  # [spy.Update]
    returned: Any
    error: Optional[BaseException] = None


class Attribution:
    """Computes, when the user takes a gradient, each term's gradient on the same tape.

    `targets`: objective id -> the differentiated tensor; `term_gradients`: objective id ->
    {term key: {variable path: gradient}} (of the recorded tensor, before any weight).
    """

    def __init__(self, eng, decomposition: Decomposition, namer, snapshot: Optional[Callable] = None):
        self.eng = eng
        self.namer = namer  # variable -> its path in the output
        self.decomposition = decomposition
        self.snapshot = snapshot  # called once, at the first gradient: what the model holds before any update
        self.snapshot_value = None
        self.targets: dict = {}
        self.term_gradients: dict = {}
        self.sources: dict = {}  # objective id -> variable paths it differentiates

    def __call__(self, gradient_index: int, record):
        tf = sys.modules.get("tensorflow")  # not loaded on another backend: its tape has no such option
        unconnected = {"unconnected_gradients": tf.UnconnectedGradients.NONE} if tf is not None else {}
        parts = self.decomposition.parts
        objective = next((o for o in parts.objectives
                          if any(g.index == gradient_index for g in o.gradient_calls())), None)
        if objective is None:
            return
        if self.snapshot is not None and self.snapshot_value is None:
            self.snapshot_value = self.snapshot()
        self.targets[objective.id] = record.target
        sources = record.sources
        paths = [self.namer(v) for v in sources]
        self.sources[objective.id] = self.sources.get(objective.id, []) + \
            [p for p in paths if p not in self.sources.get(objective.id, [])]
        out = {}
        for key, tensor in term_tensors(self.decomposition, objective.id):
            if tensor is None:
                out[key] = {}
                continue
            # a list (regularizers of distinct variables) is differentiated as its sum: one pass
            grads = record.tape.gradient(tensor, sources, **unconnected)
            out[key] = {p: self.eng.dense_gradient(g) for p, g in zip(paths, grads) if g is not None}
        merged = self.term_gradients.setdefault(objective.id, {})
        for key, grads in out.items():  # another call of the same loss adds its variables
            merged.setdefault(key, {}).update(grads)


def term_tensors(decomposition: Decomposition, objective_id: int, prefix=()) -> list:
    """(key, tensor) for every term of an objective, nested `compute_loss` overrides opened.

    Keys: ("addend", *path, id) for a custom addend; ("keras", *path, id, i) for the i-th term of a
    compute_loss expansion; ("losses", *path, id, i) for the i-th entry of model.losses. Weight
    regularizers, each reaching only its own variable, go as one list per expansion
    (("regularizers", ...) or ("losses_regularizers", ...)): one backward pass, separated by variable.
    """
    rec = decomposition.recorder
    parts = decomposition.parts
    objective = parts.objectives[objective_id]
    out = []
    for addend_id in objective.addends:
        a = parts.addends[addend_id]
        key = prefix + (addend_id,)
        if a.kind == "keras_loss" and addend_id in rec.keras_calls:
            call = rec.keras_calls[addend_id]
            if isinstance(call.expansion, Decomposition):
                inner = call.expansion
                for inner_objective in _returned_objectives(inner):
                    out += term_tensors(inner, inner_objective, key)
                continue
            if call.expansion is not None:
                for i, tensor in enumerate(call.expansion.tensors):
                    out.append((("keras",) + key + (i,), tensor))
                if call.expansion.regularizer_tensors:
                    out.append((("regularizers",) + key, list(call.expansion.regularizer_tensors)))
                continue
        if a.kind == "model_losses" and addend_id in rec.losses_captures:
            kinds = [c.kind for c in rec.losses_captures[addend_id]]
            tensors = rec.losses_lists[addend_id]
            for i, tensor in enumerate(tensors):
                if kinds[i] != "weight_regularizer":
                    out.append((("losses",) + key + (i,), tensor))
            regs = [t for t, k in zip(tensors, kinds) if k == "weight_regularizer"]
            if regs:
                out.append((("losses_regularizers",) + key, regs))
            continue
        out.append((("addend",) + key, rec.values.get(addend_id)))
    return out


def _returned_objectives(decomposition: Decomposition) -> list:
    """The objectives of a loss function whose `return` ran (the last one that did)."""
    rec = decomposition.recorder
    ran = [o.id for o in decomposition.parts.objectives
           if o.addends and all(rec.counts.get(("value", a)) for a in o.addends)]
    return ran[-1:] if ran else [o.id for o in decomposition.parts.objectives[:1]]


def instrument(decomposition: Decomposition, expand_keras: Callable, on_gradient: Optional[Callable]):
    """Build the recording copy of the function (and of a nested override)."""
    rec = Recorder(expand_keras=expand_keras)
    rec.on_gradient = on_gradient
    decomposition.recorder = rec
    decomposition.instrumented = build(decomposition.fn, decomposition.step,
                                       rewrite(decomposition.step, decomposition.parts), rec)
    if decomposition.adapt is not None:
        decomposition.instrumented = decomposition.adapt(decomposition.instrumented)
    return decomposition.instrumented


def run(call: Callable, spy_classes, eng, namer, before_call: Callable = lambda: None, model=None) -> StepRun:
    """Call `call()` once under the optimizer spy; an exception is kept, not raised. `model`: whose variables
    hold the parameters an optimizer reading `.grad` steps (the engine's `parameter_steps`, torch.optim)."""
    parameter_steps = getattr(getattr(eng, "steps_module", None), "parameter_steps", None)
    spy = OptimizerSpy(spy_classes, namer, eng.dense_gradient,
                       parameter_steps(model) if parameter_steps is not None and model is not None else None)
    result = StepRun(updates=spy.updates, returned=None)
    with spy:
        before_call()
        try:
            result.returned = call()
        except Exception as exc:  # the user's step failed: reported, as Keras's own errors are
            result.error = exc
    return result
