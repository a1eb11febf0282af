"""Keras 3 on JAX: every variable a pass can touch, snapshotted by value (the TensorFlow engine's list)."""
from __future__ import annotations

import numpy as np

from lossmap.engines.common.state import VariableSnapshot
from lossmap.engines.keras3.state import _stateful_variables


class ModelState(VariableSnapshot):
    """Weights, BatchNorm statistics, seed-generator states, optimizer and metric variables."""

    def __init__(self, model):
        super().__init__(model, _stateful_variables(model))

    @staticmethod
    def read(v):
        """The variable's value: a JAX array on the CPU, read without a copy where NumPy can."""
        return np.asarray(v.value)
