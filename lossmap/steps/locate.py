"""Find the user's step: `--step file.py:fn`, a model's `train_step` / `compute_loss` override, and how
to call it (the contract's "Custom training code" section).

    FUNCTION(x, y) | FUNCTION(x, y, sample_weight) | FUNCTION(data), chosen from its parameters;
    a first parameter named `model` or `self` gets the model first. On JAX, `train_step(state, data)` as
    Keras's training-loop guide writes it is called with the model's state (`convention="state_data"`).

MODEL may be left out when the function reaches exactly one Keras model through its
module's globals or its closure.
"""
from __future__ import annotations

import importlib
import inspect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from lossmap.errors import UserError
from lossmap.steps.read import unwrap

MODEL_PARAMS = ("model", "self")


@dataclass
class Reference:
    """Where a step reaches an object: a global of its module or a cell of its closure."""

    kind: str  # "global" | "closure"
    name: str
    holder: Any  # the globals dict, or the cell

    def get(self):
        return self.holder[self.name] if self.kind == "global" else self.holder.cell_contents

    def set(self, value):
        if self.kind == "global":
            self.holder[self.name] = value
        else:
            self.holder.cell_contents = value


@dataclass
class StepFunction:
    """A training-step function and how lossmap calls it."""

    spec: str
    fn: Callable  # the Python function (a tf.function unwrapped)
    original: Callable  # what the user's module holds (perhaps a tf.function)
    wrapped_in_tf_function: bool
    model_first: bool
    convention: str  # "data" | "x_y" | "x_y_sample_weight" | "x_y_optional_sample_weight" | "state_data"
    references: list = field(default_factory=list)  # [Reference] to Keras models


def resolve(spec: str, load_module: Callable) -> StepFunction:
    """`file.py:function`, `file.py:Class.method` or `package.module:function`."""
    if ":" not in spec:
        raise UserError(f"--step {spec}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    where, _, name = spec.rpartition(":")
    if not where or not all(part.isidentifier() for part in name.split(".")):
        raise UserError(f"--step {spec}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    if where.endswith(".py") or os.sep in where:
        if not os.path.exists(where):
            raise UserError(f"--step {spec}: no such file {where}")
    module = load_module(where)
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UserError(f"--step {spec}: {where} has no {name!r}"
                            + _suggest(module))
        obj = getattr(obj, part)
    return describe(obj, spec)


def describe(obj, spec: str) -> StepFunction:
    wrapped = hasattr(obj, "python_function")
    fn = unwrap(obj)
    if not inspect.isfunction(fn):
        raise UserError(f"--step {spec} is a {type(obj).__name__}, not a function: name the function that "
                        "runs one training step (FILE.py:train_step)")
    params = list(inspect.signature(fn).parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    model_first = bool(positional) and positional[0].name in MODEL_PARAMS
    rest = positional[1:] if model_first else positional
    required = [p for p in rest if p.default is p.empty]
    if [p.name for p in rest] == ["state", "data"]:
        convention = "state_data"  # a JAX training loop's stateless step (lossmap.engines.keras3_jax.steps)
    elif len(rest) == 1:
        convention = "data"
    elif len(required) == 2 and len(rest) >= 3:
        convention = "x_y_optional_sample_weight"
    elif len(rest) == 2:
        convention = "x_y"
    elif len(required) == 3:
        convention = "x_y_sample_weight"
    else:
        names = ", ".join(p.name for p in params) or "none"
        raise UserError(f"--step {spec} takes ({names}); lossmap calls a step as FUNCTION(x, y), "
                        "FUNCTION(x, y, sample_weight) or FUNCTION(data), after the model when the first "
                        "parameter is named model or self")
    return StepFunction(spec=spec, fn=fn, original=obj, wrapped_in_tf_function=wrapped, model_first=model_first,
                        convention=convention, references=model_references(fn))


def _suggest(module) -> str:
    found = sorted(n for n, v in vars(module).items()
                   if not n.startswith("_") and (inspect.isfunction(unwrap(v)) or hasattr(v, "python_function"))
                   and getattr(unwrap(v), "__module__", None) == module.__name__)
    return f" (functions there: {', '.join(found[:8])})" if found else ""


def referenced_globals(code) -> set:
    """Global names a code object (and the functions and comprehensions inside it) may read."""
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):
            names |= referenced_globals(const)
    return names


def references(fn, predicate) -> list:
    """The globals and closure cells of `fn` whose value satisfies `predicate`."""
    out = []
    for name in sorted(referenced_globals(fn.__code__)):
        if name in fn.__globals__ and _safe(predicate, fn.__globals__[name]):
            out.append(Reference("global", name, fn.__globals__))
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if _safe(predicate, value):
            out.append(Reference("closure", name, cell))
    return out


def _safe(predicate, value) -> bool:
    try:
        return bool(predicate(value))
    except Exception:
        return False


def looks_like_model(obj) -> bool:
    """A Keras 3 or tf_keras model, by class names and modules (no Keras import)."""
    for c in type(obj).__mro__:
        top = (c.__module__ or "").split(".")[0]
        if c.__name__ == "Model" and top in ("keras", "tf_keras"):
            return True
    return False


def model_references(fn) -> list:
    """The Keras models `fn` reaches: through its globals and closure, else through the functions it reaches."""
    return reached(fn, looks_like_model, nearest=True)


def reached(fn, predicate, depth: int = 2, nearest: bool = False) -> list:
    """`references(fn, predicate)`, and those of the functions `fn` reaches there, up to `depth` calls down (a
    JAX loop's `grad_fn` wraps the function that runs the model and its loss object); `nearest`: only the
    first level that has any."""
    found = references(fn, predicate)
    if depth == 0 or (found and nearest):
        return found
    seen = {id(fn)}
    for ref in references(fn, lambda v: inspect.isfunction(unwrap(v))):
        inner = unwrap(ref.get())
        if id(inner) not in seen:
            seen.add(id(inner))
            found += reached(inner, predicate, depth - 1, nearest)
    return found


def the_model(step: StepFunction) -> Any:
    """The one Keras model the step reaches, or exit 2 naming the candidates."""
    models = {}
    for ref in step.references:
        models.setdefault(id(ref.get()), []).append(ref)
    if len(models) == 1:
        return next(iter(models.values()))[0].get()
    if not models:
        raise UserError(f"--step {step.spec} reaches no Keras model through its module's globals or its "
                        "closure: give MODEL (a .keras file or a factory) after the step")
    names = ", ".join(sorted(f"{r.name} ({type(r.get()).__name__})" for refs in models.values() for r in refs))
    raise UserError(f"--step {step.spec} reaches {len(models)} Keras models ({names}): give MODEL to say which "
                    "one it trains")


def import_module(where: str, import_file: Callable):
    """A module named `package.module`, or a file path imported as its own module."""
    if where.endswith(".py") or os.sep in where:
        return import_file(where)
    try:
        return importlib.import_module(where)
    except ImportError as exc:
        raise UserError(f"--step: cannot import {where}: {exc}") from exc
