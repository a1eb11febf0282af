"""Keras 3 on PyTorch: every variable a pass or a step can touch, and the gradients torch leaves on them.

The variables are Keras 3's own list (`lossmap.engines.keras3.state`); a value is read over the
parameter's own memory (`detach().numpy()`, no copy). Torch also keeps state outside the values:
`loss.backward()` leaves each parameter's `.grad` set (Keras's `TorchTrainer.train_step` calls
`zero_grad()` before, not after), so the snapshot keeps each `.grad` too and puts it back,
as it was (usually `None`).
"""
from __future__ import annotations

import numpy as np

from lossmap.engines.common.state import VariableSnapshot
from lossmap.engines.keras3.state import _stateful_variables


class ModelState(VariableSnapshot):
    """Keras 3 on torch: weights, BatchNorm statistics, seed-generator states, optimizer and metric
    variables, and each variable's `.grad`."""

    def __init__(self, model):
        super().__init__(model, _stateful_variables(model))
        self.grads = [_grad_of(v) for v in self.variables]

    @staticmethod
    def read(v):
        """The value over the parameter's own memory: no copy."""
        return v.value.detach().cpu().numpy()

    def restore(self):
        super().restore()
        for v, kept in zip(self.variables, self.grads):
            param = v.value
            if kept is None:
                param.grad = None
            elif param.grad is None or not np.array_equal(param.grad.detach().cpu().numpy(), kept):
                import torch

                param.grad = torch.as_tensor(kept.copy()).to(param.device)

    def identical(self) -> bool:
        return super().identical() and all(_same_grad(_grad_of(v), kept) for v, kept in zip(self.variables, self.grads))


def _grad_of(v):
    g = getattr(v.value, "grad", None)
    return None if g is None else g.detach().cpu().numpy().copy()


def _same_grad(now, kept) -> bool:
    if now is None or kept is None:
        return now is None and kept is None
    return now.dtype == kept.dtype and now.shape == kept.shape and now.tobytes() == kept.tobytes()
