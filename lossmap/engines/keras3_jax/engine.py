"""Keras 3 on the JAX backend: where its training loss comes from.

The total is the same `Trainer.compute_loss` as on TensorFlow (`CompileLoss` plus `ops.sum` of
each entry of `model.losses`); what differs is the step around it. `JAXTrainer.train_step(state,
data)` is stateless: `jax.value_and_grad` of `compute_loss_and_updates`, which runs the model with
`stateless_call` and the loss with `stateless_compute_loss`, then `optimizer.stateless_apply`; it
returns the new state instead of assigning it. And the backend's crossentropies (`nn.py`) never
use a softmax/sigmoid's logits.

This file: the engine's identity, `model_info` and what it overrides of the TensorFlow engine
(`lossmap.engines.keras3.Keras3Engine`, whose loading, signature and batch packing are the
backend's too); the stages are in `capture.py`, `train_step.py`, `state.py`, the NumPy mirror in
`rules.py`, the anchors in `anchors.py` (notes in `notes.py`), citations and facts in `citations.py`.
No TensorFlow is imported on this path.
"""
from __future__ import annotations

from typing import Optional

from lossmap.engines.base import Batch, Capture, Engine, Signature, Verification
from lossmap.engines.keras3.engine import Keras3Engine
from lossmap.engines.keras3_jax import capture as _capture, state as _state, steps as _steps, train_step as _train_step
from lossmap.engines.keras3_jax.rules import KERAS3_JAX


class Keras3JaxEngine(Keras3Engine):
    """Keras 3 on the JAX backend (see the module docstring)."""

    backend_name = "jax"
    label = "Keras 3 (JAX)"
    rules = KERAS3_JAX  # rules.py: the JAX backend's crossentropies
    steps_module = _steps

    def summation(self) -> str:
        return (super().summation() + "; JAXTrainer.train_step differentiates it with jax.value_and_grad "
                "of compute_loss_and_updates (stateless_call, then stateless_compute_loss)")

    def walkthrough_anchors(self) -> list:
        from lossmap.engines.keras3_jax import anchors

        return anchors.anchors()

    @classmethod
    def citations(cls) -> dict:
        from lossmap.engines.keras3_jax import citations

        return citations.specs()

    def engine_facts(self, model, sig: Signature) -> dict:
        from lossmap.engines.keras3_jax import citations

        return citations.facts(self, model, sig)

    # ------------------------------------------------------------ the stages
    def capture(self, model, batch: Batch, sig: Signature, keep_tape: bool = False) -> Capture:
        return _capture.capture(self, model, batch, sig, keep_tape)

    def verify_train_step(self, model, batch: Batch, sig: Signature, record_gradient: bool = False) -> Verification:
        return _train_step.verify_train_step(self, model, batch, sig, record_gradient)

    def begin_attribution(self, model, batch: Batch, sig: Signature, terms, limit: int,
                          capture: Optional[Capture] = None, derive: bool = True):
        return _train_step.begin_attribution(self, model, batch, sig, terms, limit, capture, derive)

    attribute_gradients = Engine.attribute_gradients  # begin_attribution, then finish

    # ------------------------------------------------------------ state and randomness
    def state(self, model) -> _state.ModelState:
        return _state.ModelState(model)

    def seed_random(self, seed: int):
        """Nothing to seed: every random draw of a Keras layer on JAX comes from a `SeedGenerator`, whose
        state is a variable the state snapshot puts back before each pass."""
