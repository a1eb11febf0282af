"""What a step hands its optimizers: every `apply_gradients` / `apply`, recorded as it happens.

The methods are wrapped on the classes that define them, for the length of one run, so
every optimizer the step reaches is seen (the model's, a global one, two of them), and
only the outermost call is recorded (Keras 3's `apply_gradients` calls `apply`). The
recorded gradients are copies; the call itself goes on unchanged. An optimizer that reads
each parameter's `.grad` in `step()` (torch.optim, `parameter_steps`) is recorded with the
gradients it finds there, named through the Keras variable that holds each parameter.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

SPIED_METHODS = ("apply_gradients", "apply")


@dataclass
class Update:
    """One optimizer call: which optimizer, and the gradient it was given for each variable."""

    optimizer: Any
    method: str
    gradients: dict  # variable path -> ndarray (None where the step passed None)
    tensors: list = field(default_factory=list)  # the gradient objects as passed, for matching by identity


class OptimizerSpy:
    """`with OptimizerSpy(classes, path_of, dense) as spy:` ... `spy.updates`."""

    def __init__(self, classes, path_of: Callable, dense: Callable, parameter_steps=None):
        self.classes = list(classes)
        self.path_of = path_of
        self.dense = dense
        # (classes whose step() reads .grad, parameter -> variable or None): torch.optim on Keras's torch backend
        self.parameter_steps = parameter_steps
        self.updates: list = []
        self._saved: list = []
        self._depth = 0

    def __enter__(self):
        owners = {}  # (class, method) -> (the method, what a call of it hands the optimizer)
        for cls in self.classes:
            for klass in cls.__mro__:
                for name in SPIED_METHODS:
                    if name in vars(klass) and (klass, name) not in owners:
                        owners[(klass, name)] = (vars(klass)[name], functools.partial(self._handed, name))
        if self.parameter_steps is not None:
            classes, variable_of = self.parameter_steps
            for klass in classes:
                if "step" in vars(klass):
                    owners[(klass, "step")] = (vars(klass)["step"], functools.partial(self._in_grad, variable_of))
        for (klass, name), (original, record) in owners.items():
            setattr(klass, name, self._spied(original, record))
            self._saved.append((klass, name, original))
        return self

    def __exit__(self, *exc):
        for klass, name, original in reversed(self._saved):
            setattr(klass, name, original)
        self._saved.clear()
        return False

    def _spied(self, original, record):
        """`original`, recording its outermost calls: `record(optimizer, args, kwargs)` appends their `Update`
        and returns the arguments to call it with (iterators it read, as lists)."""
        spy = self

        def spied(optimizer, *args, **kwargs):
            if not spy._depth:
                args, kwargs = record(optimizer, list(args), kwargs)
            spy._depth += 1
            try:
                return original(optimizer, *args, **kwargs)
            finally:
                spy._depth -= 1

        spied.__wrapped__ = original
        return spied

    def _handed(self, name, optimizer, args, kwargs):
        """`apply_gradients(grads_and_vars)` / `apply(grads, trainable_variables)`: the gradients passed."""
        if name == "apply_gradients":
            pairs = list(args[0] if args else kwargs.pop("grads_and_vars"))
            args = [pairs] + args[1:]
            grads = [g for g, _ in pairs]
            variables = [v for _, v in pairs]
        else:
            grads = list(args[0] if args else kwargs["grads"])
            if args:
                args[0] = grads
            else:
                kwargs["grads"] = grads
            variables = args[1] if len(args) > 1 else kwargs.get("trainable_variables")
            variables = list(variables) if variables is not None else list(getattr(optimizer, "_trainable_variables", []))
            if len(args) > 1:
                args[1] = variables
            elif "trainable_variables" in kwargs:
                kwargs["trainable_variables"] = variables
        self.updates.append(Update(optimizer=optimizer, method=name,
                                   gradients={self.path_of(v): self.dense(g) for g, v in zip(grads, variables)},
                                   tensors=grads))
        return args, kwargs

    def _in_grad(self, variable_of, optimizer, args, kwargs):
        """torch.optim's `step()`: what it finds in each parameter's `.grad`, by the variable holding it."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        pairs = [(variable_of(p), p.grad) for p in params]
        self.updates.append(Update(optimizer=optimizer, method="step",
                                   gradients={self.path_of(v): self.dense(g) for v, g in pairs if v is not None},
                                   tensors=[g for v, g in pairs if v is not None]))
        return args, kwargs
