"""The recorder the instrumented step calls as `__lm__`: it keeps what it sees and changes nothing.

Each method returns its argument (or the result of the call it was handed) untouched,
so the instrumented step computes what the original computes. Tapes are made
persistent, which changes no value, so that every term's gradient can be taken later on
the same tape the user differentiated with.
"""
from __future__ import annotations

import inspect
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lossmap.steps.syntax import KERAS_LOSS_PAIR_METHODS


@dataclass
class GradientRecord:
    """One `<tape>.gradient(target, sources)` as it ran."""

    tape: Any
    target: Any
    sources: list  # flattened
    structure: Any  # the sources as passed (for the result's structure)
    result: Any
    inside: tuple = ()  # indices of the tapes recording when it was called
    optimizer: Any = None  # `optimizer.minimize`: the optimizer, which applies the gradient itself


@dataclass
class KerasCall:
    """A call of `compute_loss` / `compiled_loss`: its arguments and, from the engine, its expansion."""

    fn: Any
    args: tuple
    kwargs: dict
    result: Any
    expansion: Any = None  # what the engine made of it (terms and their tensors), or None
    error: Optional[str] = None  # why it could not be expanded


@dataclass
class Recorder:
    """`__lm__`: what one run of the instrumented step computed, addend by addend."""

    expand_keras: Optional[Callable] = None  # engine hook: (KerasCall) -> expansion, inside the tape
    on_gradient: Optional[Callable] = None  # (gradient index, GradientRecord): per-term gradients, before any update
    expand_losses: Optional[Callable] = None  # engine hook: (list read from model.losses) -> AdditionalCaptures
    run_backward: Optional[Callable] = None  # engine hook (torch): (method, args, kwargs, attribute) -> returned
    losses_captures: dict = field(default_factory=dict)  # addend id -> AdditionalCaptures, at read time
    errors: list = field(default_factory=list)  # what lossmap's own hooks could not do, in words
    tapes: dict = field(default_factory=dict)  # tape index -> tape
    user_persistent: dict = field(default_factory=dict)  # tape index -> what the user asked for
    open_tapes: list = field(default_factory=list)
    gradients: dict = field(default_factory=dict)  # gradient index -> GradientRecord
    values: dict = field(default_factory=dict)  # addend id -> value
    coefs: dict = field(default_factory=dict)  # coefficient id -> value
    factors: dict = field(default_factory=dict)  # addend id -> {side: value}
    keras_calls: dict = field(default_factory=dict)  # addend id -> KerasCall
    losses_lists: dict = field(default_factory=dict)  # addend id -> list read from model.losses
    returned: Any = None
    returned_set: bool = False
    counts: Counter = field(default_factory=Counter)  # ("value", id) -> times evaluated

    # ------------------------------------------------------------ tapes and gradients
    def tape(self, index, factory, *args, **kwargs):
        bound = inspect.signature(factory).bind_partial(*args, **kwargs).arguments
        self.user_persistent[index] = bool(bound.get("persistent", False))
        bound["persistent"] = True
        made = factory(**bound)
        if callable(getattr(made, "bind", None)):  # a tape that replays the block (JAX) reads the recorder
            made.bind(self)
        self.tapes[index] = made
        return _TapeContext(self, index, made)

    def gradient(self, index, tape, target, sources, *args, **kwargs):
        result = tape.gradient(target, sources, *args, **kwargs)
        record = GradientRecord(tape=tape, target=target, sources=flatten(sources),
                                structure=sources, result=result, inside=tuple(self.open_tapes))
        self.gradients[index] = record
        self.counts[("gradient", index)] += 1
        if self.on_gradient is not None:
            try:
                self.on_gradient(index, record)
            except Exception as exc:  # never the user's step's failure: reported instead
                self.errors.append(f"per-term gradients at gradient call {index}: {type(exc).__name__}: {exc}")
        return result

    def minimize(self, index, method, loss, var_list, tape=None, **kwargs):
        """`optimizer.minimize(loss, var_list, tape=tape)`: recorded as a gradient of `loss`, then run."""
        sources = var_list() if callable(var_list) else var_list
        record = GradientRecord(tape=tape, target=loss, sources=flatten(sources), structure=sources,
                                result=None, inside=tuple(self.open_tapes))
        record.optimizer = getattr(method, "__self__", None)
        self.gradients[index] = record
        self.counts[("gradient", index)] += 1
        if self.on_gradient is not None and tape is not None and not callable(loss):
            try:
                self.on_gradient(index, record)
            except Exception as exc:
                self.errors.append(f"per-term gradients at minimize call {index}: {type(exc).__name__}: {exc}")
        return method(loss, var_list, tape=tape, **kwargs)

    def backward(self, index, method, *args, **kwargs):
        """`X.backward(...)` (torch): the engine's `run_backward` records it as a gradient of X (each term's
        gradient taken before the graph is consumed) and runs it as written."""
        def attribute(record):
            record.inside = tuple(self.open_tapes)
            self.gradients[index] = record
            self.counts[("gradient", index)] += 1
            if self.on_gradient is not None:
                try:
                    self.on_gradient(index, record)
                except Exception as exc:
                    self.errors.append(f"per-term gradients at backward call {index}: {type(exc).__name__}: {exc}")
        if self.run_backward is None:
            return method(*args, **kwargs)
        return self.run_backward(method, args, kwargs, attribute)

    # ------------------------------------------------------------ addends
    def value(self, ids, value):
        for i in ids:
            self.values[i] = value
            self.counts[("value", i)] += 1
        return value

    def coef(self, index, value):
        self.coefs[index] = value
        return value

    def factor(self, ids, side, value):
        for i in ids:
            self.factors.setdefault(i, {})[side] = value
        return value

    def keras_loss(self, ids, fn, *args, **kwargs):
        returned = fn(*args, **kwargs)
        # `loss, aux = self.stateless_compute_loss(...)`: the step gets the pair, the term is its loss
        result = returned[0] if getattr(fn, "__name__", "") in KERAS_LOSS_PAIR_METHODS else returned
        call = KerasCall(fn, args, kwargs, result)
        if self.expand_keras is not None:
            try:
                call.expansion = self.expand_keras(call)
            except Exception as exc:  # reported as a finding: the call stays one term
                call.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        for i in ids:
            self.keras_calls[i] = call
            self.values[i] = result
            self.counts[("value", i)] += 1
        return returned

    def losses(self, ids, value):
        captured = None
        if self.expand_losses is not None:
            try:
                captured = self.expand_losses(list(value))
            except Exception as exc:  # the read stays one term, with the reason
                self.errors.append(f"model.losses: {type(exc).__name__}: {exc}")
        for i in ids:
            self.losses_lists[i] = list(value)
            if captured is not None:
                self.losses_captures[i] = captured
        return value

    def returned_value(self, value):
        self.returned = value
        self.returned_set = True
        return value


class _TapeContext:
    """The user's `with tape:`: the persistent tape, and which tapes are open (for nested tapes)."""

    def __init__(self, recorder: Recorder, index: int, tape):
        self.recorder, self.index, self.tape = recorder, index, tape

    def __enter__(self):
        entered = self.tape.__enter__()
        self.recorder.open_tapes.append(self.index)
        return entered

    def __exit__(self, *exc):
        self.recorder.open_tapes.remove(self.index)
        return self.tape.__exit__(*exc)


def flatten(structure) -> list:
    """`tf.nest.flatten` where TensorFlow is loaded; `keras.tree.flatten` on another backend (same order)."""
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        return list(tf.nest.flatten(structure))
    from keras import tree

    return list(tree.flatten(structure))
