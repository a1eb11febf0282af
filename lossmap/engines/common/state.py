"""The by-value snapshot of a model's state both engines restore after every pass."""
from __future__ import annotations

import numpy as np

from lossmap.engines.common.helpers import all_metrics


class Constant:
    """A snapshot of a variable whose every element has the same bits (a fresh optimizer's zero
    slots, a step counter): the one value and the shape, not a copy of the variable."""

    __slots__ = ("value", "shape")

    def __init__(self, value, shape):
        self.value, self.shape = value, shape

    def array(self):
        return np.full(self.shape, self.value, dtype=self.value.dtype)

    def __array__(self, dtype=None, copy=None):  # reads like the array it stands for (np.array(value))
        a = self.array()
        return a if dtype is None else a.astype(dtype)


def bits(a):
    """`a` as unsigned integers of its item size (no copy), to compare bit for bit; None when it has no such view."""
    a = np.asarray(a)
    if a.dtype.kind not in "fiucb" or a.dtype.itemsize not in (1, 2, 4, 8) or not a.flags.c_contiguous:
        return None
    return a.view(np.dtype(f"u{a.dtype.itemsize}")).reshape(-1)


def snapshot_of(a):
    """What to keep of the value `a`: a `Constant`, or a copy."""
    b = bits(a)
    if b is not None and b.size > 1 and b.min() == b.max():
        return Constant(np.asarray(a).reshape(-1)[0].copy(), np.shape(a))
    return np.array(a, copy=True)


def same(now, kept) -> bool:
    """Whether the value `now` has the bits of the snapshot `kept` (and its dtype and shape)."""
    now = np.asarray(now)
    if isinstance(kept, Constant):
        b = bits(now)
        if b is None or now.shape != kept.shape or now.dtype != kept.value.dtype:
            return False
        first = bits(kept.value.reshape(1))[0]
        return bool(b.min() == first and b.max() == first)
    if now.dtype != kept.dtype or now.shape != kept.shape:
        return False
    a, b = bits(now), bits(kept)
    return bool(np.array_equal(a, b)) if a is not None and b is not None else now.tobytes() == kept.tobytes()


class VariableSnapshot:
    """Every variable a forward pass or a train step can touch, by value, and a bit-for-bit check.

    `variables` is the engine's list of stateful variables; metrics built lazily during
    the run are reset to their initial state on restore. A variable of one repeated value
    is kept as that value (`Constant`); a restore writes back only the variables that
    changed, so a read of the others that is still alive (a recorded tape) shares their
    memory instead of being copied on the write.
    """

    def __init__(self, model, variables):
        self.model = model
        self.variables = list(variables)
        self.values = [snapshot_of(self.read(v)) for v in self.variables]
        self.metric_ids = {id(m) for m in all_metrics(model)}

    @staticmethod
    def read(v):
        """The variable's current value as an array (the engines read without a copy where they can)."""
        return v.numpy()

    def restore(self):
        for v, value in zip(self.variables, self.values):
            if not same(self.read(v), value):
                v.assign(value.array() if isinstance(value, Constant) else value)
        for m in all_metrics(self.model):
            if id(m) not in self.metric_ids:
                m.reset_state()

    def identical(self) -> bool:
        return all(same(self.read(v), value) for v, value in zip(self.variables, self.values))

    def nbytes(self) -> int:
        """What the snapshot holds."""
        return sum(value.value.nbytes if isinstance(value, Constant) else value.nbytes for value in self.values)
