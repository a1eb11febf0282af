"""Keras 3 on PyTorch: verification against the real `TorchTrainer.train_step`, and each term's gradient.

The step runs as Keras runs it on torch: a forward pass, `zero_grad()`, `_compute_loss`,
`loss.backward()`, then `self.optimizer.apply(gradients, trainable_weights)`; the gradients
it hands to `apply` are recorded (`_ApplyRecorder`), so attribution can derive the largest
compiled term's gradient from them. Attribution itself is Keras 3's
(`lossmap.engines.keras3.train_step`), run with torch autograd (`capture.Autograd`).
"""
from __future__ import annotations

from lossmap.engines.base import Batch, Signature, Verification
from lossmap.engines.common.helpers import as_numpy
from lossmap.engines.keras3 import train_step as _k3
from lossmap.engines.keras3.train_step import attribute_gradients, begin_attribution  # noqa: F401 - autograd's


def verify_train_step(engine, model, batch: Batch, sig: Signature, record_gradient: bool = False) -> Verification:
    """Keras 3's verification: the loss the real `train_step` logs, and the gradients it hands `optimizer.apply`."""
    return _k3.verify_train_step(engine, model, batch, sig, record_gradient, recorder_class=_ApplyRecorder)


class _ApplyRecorder:
    """Keeps (copies of) the gradients `train_step` hands to `optimizer.apply`, for the one step.

    Only kept when they are the plain gradient of the loss (no loss scaling).
    """

    def __init__(self, optimizer, model):
        self.optimizer = optimizer
        self.usable = type(optimizer).__name__ != "LossScaleOptimizer"
        self.paths = {id(v): v.path for v in model.trainable_variables}
        self.gradient = None

    def __enter__(self):
        original = self.optimizer.apply
        recorder = self

        def apply(grads, trainable_variables=None, *args, **kwargs):
            if recorder.usable and recorder.gradient is None and trainable_variables is not None:
                recorder.gradient = {recorder.paths.get(id(v), getattr(v, "path", None)): as_numpy(g)
                                     for g, v in zip(grads, trainable_variables)}
            return original(grads, trainable_variables, *args, **kwargs)

        object.__setattr__(self.optimizer, "apply", apply)
        return self

    def __exit__(self, *exc):
        try:
            object.__delattr__(self.optimizer, "apply")
        except AttributeError:
            pass
        return False
