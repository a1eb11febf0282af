"""Keras 3 on PyTorch: where its training loss comes from.

The total is the same `Trainer.compute_loss` as on TensorFlow (Keras's aggregation code is
backend-agnostic), so loading, the signature, batch packing and the inventory are Keras 3's
(`lossmap.engines.keras3.engine`). What the torch backend does otherwise lives here:
its training step (`TorchTrainer.train_step`: `loss.backward()`, `optimizer.apply`) in
`train_step.py`, autograd as the tape in `capture.py`, the parameters' `.grad` in the state
(`state.py`), its crossentropies (attached logits unread) in `rules.py`, its trainer and nn
source in `anchors.py`/`notes.py`, and its half of the citations in `citations.py`.
TensorFlow is never imported on this path.
"""
from __future__ import annotations

from lossmap.engines.keras3.engine import Keras3Engine
from lossmap.engines.keras3_torch import capture as _capture, state as _state, steps as _steps
from lossmap.engines.keras3_torch import train_step as _train_step
from lossmap.engines.keras3_torch.rules import TORCH
from lossmap.errors import UserError


class Keras3TorchEngine(Keras3Engine):
    """Keras 3 on the PyTorch backend (see the module docstring)."""

    name = "keras3"
    label = "Keras 3 (PyTorch)"
    backend_name = "torch"
    rules = TORCH
    steps_module = _steps
    capture_module, train_step_module, state_module = _capture, _train_step, _state
    anchors_module, citations_module = "lossmap.engines.keras3_torch.anchors", "lossmap.engines.keras3_torch.citations"

    def __init__(self):
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise UserError("Keras's backend is torch (KERAS_BACKEND) but PyTorch is not installed: "
                            "pip install torch (lossmap's extra: pip install 'lossmap[torch]')") from exc
        super().__init__()
        if self.keras.backend.backend() != "torch":
            raise UserError(f"Keras was already imported with the {self.keras.backend.backend()!r} backend in this "
                            "process; run lossmap in a new process with KERAS_BACKEND=torch")

    def autodiff(self):
        """Torch autograd, in the words of `tf.GradientTape` Keras 3's attribution uses."""
        return _capture.AUTOGRAD

    def summation(self) -> str:
        return super().summation() + "; the torch backend differentiates it with loss.backward()"

    def seed_random(self, seed: int):
        """`torch.manual_seed`: torch's own random ops draw the same in every pass (Keras's layers draw
        from their SeedGenerator state, which the state snapshot puts back)."""
        import torch

        torch.manual_seed(seed)
