"""Which function of the user's to read, and how: the step, and an overridden `compute_loss` it calls.

    train_step override      -> the override, called as model.train_step(data)
    compute_loss override    -> Keras's default step (`default_step.keras_train_step`), whose
                                compute_loss call opens into the override
    --step FILE.py:FUNCTION  -> the function, called by the contract's convention
"""
from __future__ import annotations

import types
from typing import Optional

from lossmap.errors import UserError
from lossmap.steps import default_step
from lossmap.steps.locate import StepFunction, describe
from lossmap.steps.read import SourceUnavailable, read_function
from lossmap.steps.run import Decomposition
from lossmap.steps.split import split, split_returns


def decompose(eng, model, step: Optional[StepFunction]) -> Decomposition:
    """The decomposition of what trains `model`: `step` when given, else the model's own overrides."""
    overridden = eng.overrides(model)
    nested = _compute_loss(overridden["compute_loss"])
    steps_module = getattr(eng, "steps_module", None)
    differentiated = getattr(steps_module, "differentiated_function", None)  # JAX
    loop = getattr(steps_module, "training_loop_step", None)  # JAX: a --step train_step(state, data)
    found = differentiated(model) if step is None and differentiated is not None else None
    if step is not None and loop is not None:
        found = loop(step)
    if found is not None:  # the step's loss is a function's return value: the step written out, opening into it
        nested = _compute_loss(found.function, found.adapt)
        overridden = dict(overridden, train_step=None)
    if step is not None and found is None and step.convention == "state_data":
        raise UserError(f"--step {step.spec} takes (state, data), a JAX training loop's stateless step: lossmap "
                        "reads one on the JAX backend (--backend jax) when it differentiates with "
                        "jax.value_and_grad and applies with optimizer.stateless_apply")
    if step is not None and found is None:
        outer = _read(step.fn, "function", step.spec, eng)
    elif overridden["train_step"] is not None:
        outer = _read(overridden["train_step"], "train_step", f"{type(model).__name__}.train_step", eng)
    elif nested is not None:
        fn = found.step if found is not None else default_step.keras_train_step
        outer = _read(fn, "keras_default", "Keras's default train_step")
        outer.words = found  # the written-out step's title and verification path, when not Keras's own
    else:
        raise ValueError("nothing custom to decompose")
    outer.nested = nested
    if not outer.parts.objectives:
        why = getattr(getattr(eng, "steps_module", None), "no_objective_reason", None)  # the backend's own words
        if why is not None and why(outer):
            raise UserError(why(outer))
        raise UserError(f"{_where(outer)} never differentiates a loss with a GradientTape (no "
                        "tape.gradient(loss, variables) whose result an optimizer applies): lossmap explains a step "
                        "that computes and applies gradients")
    return outer


def _compute_loss(fn, adapt=None) -> Optional[Decomposition]:
    if fn is None:
        return None
    step = _source(fn, f"{fn.__qualname__}")
    first = getattr(adapt, "has_aux", False)
    return Decomposition(fn=fn, step=step, parts=split_returns(step, first), kind="compute_loss", adapt=adapt)


def _read(fn, kind: str, spec: str, eng=None) -> Decomposition:
    step = _source(fn, spec)
    more = getattr(getattr(eng, "steps_module", None), "gradient_calls", None)  # torch: X.backward()
    if more is not None:
        more(step)
    return Decomposition(fn=fn, step=step, parts=split(step), kind=kind)


class StepUnreadable(UserError):
    """The step's source cannot be read (a REPL, compiled code): a model's own override falls back to
    the compile-time inventory, a --step function is exit 2."""


def _source(fn, spec):
    try:
        return read_function(fn)
    except SourceUnavailable as exc:
        raise StepUnreadable(f"{spec}: {exc}; lossmap reads the step from its source file: define it in a .py "
                             "file") from exc
    except Exception as exc:  # a parse failure of code Python itself runs: say so, not a traceback
        raise UserError(f"{spec}: lossmap could not read its source ({type(exc).__name__}: {exc})") from exc


def _where(d: Decomposition) -> str:
    return f"{d.fn.__qualname__} ({d.step.file}:{d.step.start_line})"


def arguments(d: Decomposition, step: Optional[StepFunction], model, x, y, sample_weight) -> tuple:
    """The positional arguments of one call of the step, by the contract's convention."""
    if d.kind == "train_step":
        return ((x, y) if sample_weight is None else (x, y, sample_weight),)
    if d.kind == "keras_default":  # a written-out step may take more (JAX's training loop: its optimizer)
        return (model, x, y, sample_weight) + tuple(getattr(d.words, "extra_arguments", ()))
    head = (model,) if step.model_first else ()
    if step.convention == "data":
        return head + (((x, y) if sample_weight is None else (x, y, sample_weight)),)
    if step.convention == "x_y":
        return head + (x, y)
    if step.convention == "x_y_sample_weight":
        return head + (x, y, sample_weight)
    return head + ((x, y) if sample_weight is None else (x, y, sample_weight))


def callables(d: Decomposition, step: Optional[StepFunction], model, eng=None):
    """(instrumented, real): the two functions a run calls with `arguments(...)`."""
    if d.kind == "train_step":
        return types.MethodType(d.instrumented, model), model.train_step
    if d.kind == "keras_default":  # the backend's own real step where it differs (JAX's is stateless)
        if getattr(d.words, "real", None) is not None:  # a written-out step whose real step is the user's
            return d.instrumented, d.words.real
        real = getattr(getattr(eng, "steps_module", None), "real_default_step", _real_default_step)
        return d.instrumented, real(model)
    return d.instrumented, step.fn


def _real_default_step(model):
    """The model's real `train_step` (Keras's own), called like `keras_train_step`."""
    def call(_model, x, y, sample_weight=None):
        data = (x, y) if sample_weight is None else (x, y, sample_weight)
        return model.train_step(data)
    return call


def describe_step(obj, spec) -> StepFunction:
    return describe(obj, spec)
