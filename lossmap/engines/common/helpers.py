"""Helpers every engine needs, whatever Keras it knows: NumPy conversion, JSON-safe
configs, dense gradients, metric lists, one-line errors, where user code lives, and
the by-value snapshot of a model's state.
"""
from __future__ import annotations

import inspect
import json
from typing import Optional

import numpy as np


def as_numpy(t):
    return None if t is None else np.array(t)


def jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def dense_grad(tf, g):
    """A gradient as a dense array; Embedding (a gather) yields `tf.IndexedSlices`."""
    if g is None:
        return None
    if isinstance(g, tf.IndexedSlices):
        g = tf.convert_to_tensor(g)
    return np.array(g)


def reg_config(reg):
    if reg is None:
        return None
    try:
        return jsonable(reg.get_config())
    except Exception:
        return None


def call_regularizer(reg, tensor):
    return np.array(reg(tensor))


def all_metrics(model):
    try:
        return list(model.metrics)
    except Exception:
        return []


def one_line(exc) -> str:
    text = str(exc).strip().splitlines()
    first = next((line.strip() for line in text if line.strip()), type(exc).__name__)
    return first[:400]


def builtin_fn_name(loss_fn, loss_base, wrapper_cls, losses_module: str, builtin_names) -> Optional[str]:
    """The name of the built-in loss function `loss_fn` wraps, or None for user code.

    A subclass that overrides `call` or `__call__` is user code, whatever it wraps.
    """
    if not isinstance(loss_fn, wrapper_cls):
        return None
    cls = type(loss_fn)
    if cls.call is not wrapper_cls.call or cls.__call__ is not loss_base.__call__:
        return None
    fn = loss_fn.fn
    if getattr(fn, "__module__", "") != losses_module:
        return None
    name = getattr(fn, "__name__", None)
    return name if name in builtin_names else None


def is_builtin_regularizer(reg, regularizers_module: str, builtin_names) -> bool:
    if reg is None:
        return False
    cls = type(reg)
    return cls.__module__ == regularizers_module and cls.__name__ in builtin_names


def _code_of(obj):
    """The class or function whose source defines `obj`'s behaviour."""
    return obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)


def code_origin(obj) -> Optional[dict]:
    """Where the code of a class or function lives: file, first line, qualified name."""
    if obj is None:
        return None
    obj = _code_of(obj)
    try:
        path = inspect.getsourcefile(obj)
        _, line = inspect.getsourcelines(obj)
    except (TypeError, OSError):
        path, line = None, None
    return {
        "module": getattr(obj, "__module__", None),
        "qualname": getattr(obj, "__qualname__", getattr(obj, "__name__", None)),
        "file": path,
        "line": line,
        "kind": "class" if inspect.isclass(obj) else "function",
    }


class VariableSnapshot:
    """Every variable a forward pass or a train step can touch, by value, and a bit-for-bit check.

    `variables` is the engine's list of stateful variables; metrics built lazily during
    the run are reset to their initial state on restore.
    """

    def __init__(self, model, variables):
        self.model = model
        self.variables = list(variables)
        self.values = [np.array(v.numpy(), copy=True) for v in self.variables]
        self.metric_ids = {id(m) for m in all_metrics(model)}

    def restore(self):
        for v, value in zip(self.variables, self.values):
            v.assign(value)
        for m in all_metrics(self.model):
            if id(m) not in self.metric_ids:
                m.reset_state()

    def identical(self) -> bool:
        for v, value in zip(self.variables, self.values):
            now = np.array(v.numpy())
            if now.dtype != value.dtype or now.shape != value.shape or now.tobytes() != value.tobytes():
                return False
        return True
