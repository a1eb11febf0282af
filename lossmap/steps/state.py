"""Everything a custom step can change, snapshotted and put back bit for bit.

Beyond the model's own state (`Engine.state`: weights, BatchNorm statistics, seed
generators, the model's optimizer and metrics), a hand-written step reaches optimizers
and metrics through its module's globals, its closure or attributes of the model (two
optimizers, one per loss). Their variables are snapshotted too (a torch.optim optimizer's
state dict, deep-copied and loaded back). An optimizer that was never built would be built by
the step (new variables on the user's object): a fresh copy of it takes each run instead,
swapped in wherever the step reaches it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lossmap.steps.locate import Reference, references


@dataclass
class AttributeReference:
    """An attribute of the model that holds an optimizer or a metric."""

    holder: Any
    name: str
    kind: str = "attribute"

    def get(self):
        return getattr(self.holder, self.name)

    def set(self, value):
        object.__setattr__(self.holder, self.name, value)  # around Keras's attribute tracking


def attribute_references(obj, predicate) -> list:
    out = []
    for name, value in list(vars(obj).items()):
        try:
            if predicate(value):
                out.append(AttributeReference(obj, name))
        except Exception:
            continue
    return out


class StepState:
    """The model's state plus every optimizer and metric the step reaches."""

    def __init__(self, eng, model, fn=None, step=None):
        self.eng = eng
        self.model = model
        self.model_state = eng.state(model)
        # MODEL given next to a step that reaches a model of its own: the step trains MODEL for the runs
        self.model_refs = [r for r in (step.references if step is not None else []) if r.get() is not model]
        is_optimizer = lambda o: isinstance(o, eng.optimizer_classes())  # noqa: E731
        is_metric = lambda o: isinstance(o, eng.metric_classes())  # noqa: E731
        reached = attribute_references(model, is_optimizer)
        metrics = attribute_references(model, is_metric)
        if fn is not None:
            reached += references(fn, is_optimizer)
            metrics += references(fn, is_metric)
        self.optimizer_refs = reached
        self.optimizers = _unique(r.get() for r in reached)
        # torch.optim: no variables, a state dict (moments, step counts) that step() changes in place
        self.native = [(o, _copied_state(o)) for o in self.optimizers if _native(o)]
        self.optimizers = [o for o in self.optimizers if not _native(o)]
        self.unbuilt = [o for o in self.optimizers if not _built(o)]
        known = {id(v) for v in self.model_state.variables}
        extra = []
        for obj in [o for o in self.optimizers if o not in self.unbuilt] + _unique(r.get() for r in metrics):
            for v in obj.variables:
                if id(v) not in known:
                    known.add(id(v))
                    extra.append(v)
        self.extra = extra
        self.extra_values = [np.array(v.numpy(), copy=True) for v in extra]
        self._swapped: list = []

    def swap_in_copies(self):
        """Fresh copies of the never-built optimizers, wherever the step reaches them (one per run);
        the analysed model wherever the step reaches another one."""
        self.swap_back()
        for ref in self.model_refs:
            self._swapped.append((ref, ref.get()))
            ref.set(self.model)
        for original in self.unbuilt:
            copy = type(original).from_config(original.get_config())
            for ref in self.optimizer_refs:
                if ref.get() is original:
                    ref.set(copy)
                    self._swapped.append((ref, original))

    def swap_back(self):
        for ref, original in reversed(self._swapped):
            ref.set(original)
        self._swapped.clear()

    @property
    def notes(self) -> list:
        if not self.unbuilt:
            return []
        names = ", ".join(type(o).__name__ for o in self.unbuilt)
        return [f"the step's optimizer ({names}) was not built yet, so a fresh copy of it took each run"]

    def restore(self):
        self.swap_back()
        self.model_state.restore()
        for v, value in zip(self.extra, self.extra_values):
            v.assign(value)
        for optimizer, saved in self.native:
            optimizer.load_state_dict(_copied_state_dict(saved))

    def identical(self) -> bool:
        if not self.model_state.identical():
            return False
        if any(not _same_state(_copied_state(o), saved) for o, saved in self.native):
            return False
        for v, value in zip(self.extra, self.extra_values):
            now = np.array(v.numpy())
            if now.dtype != value.dtype or now.shape != value.shape or now.tobytes() != value.tobytes():
                return False
        return all(not _built(o) for o in self.unbuilt)


def _native(optimizer) -> bool:
    """A torch.optim optimizer (by what it has: parameter groups and a state dict, no Keras variables)."""
    return hasattr(optimizer, "param_groups") and hasattr(optimizer, "load_state_dict") and \
        not hasattr(optimizer, "variables")


def _copied_state(optimizer) -> dict:
    return _copied_state_dict(optimizer.state_dict())


def _copied_state_dict(state: dict) -> dict:
    import copy

    return copy.deepcopy(state)  # tensors cloned: load_state_dict and step() must not share them


def _same_state(a, b) -> bool:
    """Two state dicts, tensors compared bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if hasattr(a, "detach") and hasattr(a, "shape"):
        x, y = a.detach().cpu().numpy(), b.detach().cpu().numpy()
        return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
    return a == b


def _built(optimizer) -> bool:
    """Keras 3 optimizers say `built`; tf_keras's have variables once built."""
    built = getattr(optimizer, "built", None)
    if built is None:
        built = getattr(optimizer, "_built", None)
    if built is None:
        try:
            built = bool(optimizer.variables())
        except TypeError:
            built = bool(optimizer.variables)
    return bool(built)


def _unique(objects) -> list:
    seen, out = set(), []
    for o in objects:
        if id(o) not in seen:
            seen.add(id(o))
            out.append(o)
    return out


__all__ = ["StepState", "AttributeReference", "Reference", "attribute_references"]
