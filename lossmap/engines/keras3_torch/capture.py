"""Keras 3 on PyTorch: the training-mode forward pass that captures every term.

Keras 3's capture (`lossmap.engines.keras3.capture`) is backend-agnostic but for its
gradient tape: torch records every operation on a tensor that requires grad, so the
"tape" here (`Autograd`) is torch's autograd graph itself, read with
`torch.autograd.grad`, and a pass that keeps no tape runs under `torch.no_grad()`.
`Autograd` speaks the few words of `tf.GradientTape` that Keras 3's attribution uses,
so that code runs unchanged on torch.
"""
from __future__ import annotations


from lossmap.engines.base import Batch, Capture, Signature
from lossmap.engines.common.helpers import tensorflow_left_alone
from lossmap.engines.keras3 import capture as _k3


class _Tape:
    """`tf.GradientTape` on torch: recording is autograd's (`torch.enable_grad` inside the block);
    `gradient` differentiates the sum of `target` with respect to Keras variables or tensors."""

    def __init__(self, persistent=False):
        import torch

        self.torch = torch
        self.persistent = persistent
        self._grad = torch.enable_grad()

    def __enter__(self):
        self._grad.__enter__()
        return self

    def __exit__(self, *exc):
        return self._grad.__exit__(*exc)

    def stop_recording(self):
        return self.torch.no_grad()

    def gradient(self, target, sources, **options):  # options: TensorFlow's (unconnected_gradients), moot here
        torch = self.torch
        targets = [t for t in (target if isinstance(target, (list, tuple)) else [target]) if t is not None]
        inputs = [getattr(s, "value", s) for s in sources]
        needed = [i for i, x in enumerate(inputs) if getattr(x, "requires_grad", False)]
        outputs = [t for t in targets if getattr(t, "requires_grad", False)]
        grads = [None] * len(inputs)
        if needed and outputs:
            found = torch.autograd.grad(sum(o.sum() for o in outputs), [inputs[i] for i in needed],
                                        retain_graph=self.persistent, allow_unused=True)
            for i, g in zip(needed, found):
                grads[i] = g
        return grads


class Autograd:
    """The part of the `tensorflow` module Keras 3's attribution code calls, on torch."""

    GradientTape = _Tape

    class IndexedSlices:  # torch has no sparse gradient type in Keras: nothing is an instance
        pass


AUTOGRAD = Autograd()


def capture(engine, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
    """Keras 3's capture on torch: with `keep_tape`, the pass's autograd graph is kept for
    `begin_attribution`; without, it runs under `torch.no_grad()` (no graph is built)."""
    import torch

    tape = _Tape(persistent=True) if keep_tape else None
    with tape if tape is not None else torch.no_grad(), tensorflow_left_alone():
        return _k3._capture(engine, model, batch, sig, tape)
