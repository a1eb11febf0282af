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


class _ApplyRecorder(_k3._GradientRecorder):
    """Keras 3's recorder on `optimizer.apply(gradients, trainable_variables)`, where `TorchTrainer.train_step`
    hands over each parameter's `.grad`; kept as copies (`optimizer.apply` does not change them, the next
    `zero_grad` drops them)."""

    method = "apply"

    def pairs(self, args, kwargs):
        grads = args[0] if args else kwargs.get("grads")
        variables = args[1] if len(args) > 1 else kwargs.get("trainable_variables")
        return list(zip(grads, variables or [])), args

    def array(self, g):
        return as_numpy(g)
