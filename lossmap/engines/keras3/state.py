"""Keras 3: every variable a forward pass or a train step can touch, snapshotted by value."""
from __future__ import annotations

import numpy as np

from lossmap.engines.common.helpers import all_metrics
from lossmap.engines.common.state import VariableSnapshot


class ModelState(VariableSnapshot):
    """Keras 3: weights, BatchNorm statistics, seed-generator states, optimizer and metric variables."""

    def __init__(self, model):
        super().__init__(model, _stateful_variables(model))

    @staticmethod
    def read(v):
        """The value over the variable's own buffer: no copy (a later write to the variable copies first)."""
        import tensorflow as tf

        return np.asarray(tf.convert_to_tensor(v.value))


def _stateful_variables(model):
    from keras.src.backend.common import global_state

    found, seen = [], set()

    def add(vs):
        for v in vs:
            if id(v) not in seen:
                seen.add(id(v))
                found.append(v)

    add(model.variables)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "built", False):
        add(optimizer.variables)
    for m in all_metrics(model):
        add(m.variables)
    gen = global_state.get_global_attribute("global_seed_generator")
    if gen is not None:
        add([gen.state])
    return found
