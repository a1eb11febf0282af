"""Keras 3 on PyTorch: verification against the real `TorchTrainer.train_step`, and each term's gradient.

The step runs as Keras runs it on torch: a forward pass, `zero_grad()`, `_compute_loss`,
`loss.backward()`, then `self.optimizer.apply(gradients, trainable_weights)`; the gradients
it hands to `apply` are recorded (`_ApplyRecorder`), so attribution can derive the largest
compiled term's gradient from them. Attribution itself is Keras 3's
(`lossmap.engines.keras3.train_step`), run with torch autograd (`capture.Autograd`).
"""
from __future__ import annotations

from typing import Optional

from lossmap.engines.base import Batch, Capture, Signature, Verification
from lossmap.engines.common.helpers import as_numpy
from lossmap.engines.common.train_step import no_optimizer, run_train_step, swap_in_fresh_optimizer
from lossmap.engines.keras3 import train_step as _k3


def verify_train_step(engine, model, batch: Batch, sig: Signature, record_gradient: bool = False) -> Verification:
    """The loss the model's real `train_step` logs, and (`record_gradient`) the gradient it applied."""
    xs, ys, sw = engine.pack_batch(model, sig, batch)
    notes = []
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return no_optimizer(notes)
    swapped = swap_in_fresh_optimizer(model, optimizer, notes) if not optimizer.built else None
    recorder = (lambda m: _ApplyRecorder(m.optimizer, m)) if record_gradient else None
    return run_train_step(model, (xs, ys, sw), notes, swapped, recorder=recorder)


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


def begin_attribution(engine, model, batch: Batch, sig: Signature, terms, limit: int,
                      capture: Optional[Capture] = None, derive: bool = True):
    """Keras 3's attribution, with torch autograd: each unit's gradient is `torch.autograd.grad` of its
    terms' sum with respect to the trainable variables' parameters, on the capture's graph."""
    return _k3.begin_attribution(engine, model, batch, sig, terms, limit, capture, derive)
