"""The by-value snapshot of a model's state both engines restore after every pass."""
from __future__ import annotations

import numpy as np

from lossmap.engines.common.helpers import all_metrics


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
