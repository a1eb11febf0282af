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
A `compute_loss` or `stateless_compute_loss` override is explained through Keras's default step, whose
tape on JAX replays its block from the trainable values (`steps.py`, `capture.linearise_default_step`), and
a `train_step(state, data)` override written as Keras's JAX guide writes it the same way; another one, or a
`--step` function, is refused in one line (`steps.refusal`). Archives load without computing the initial
values their weights overwrite (`load_archive`).
No TensorFlow is imported on this path.
"""
from __future__ import annotations

from lossmap.engines.common.initial_values import initial_values_deferred
from lossmap.engines.keras3.engine import Keras3Engine
from lossmap.engines.keras3_jax import capture as _capture, state as _state, steps as _steps, train_step as _train_step
from lossmap.engines.keras3_jax.rules import KERAS3_JAX


class Keras3JaxEngine(Keras3Engine):
    """Keras 3 on the JAX backend (see the module docstring)."""

    backend_name = "jax"
    label = "Keras 3 (JAX)"
    rules = KERAS3_JAX  # rules.py: the JAX backend's crossentropies
    steps_module = _steps
    capture_module, train_step_module, state_module = _capture, _train_step, _state
    anchors_module, citations_module = "lossmap.engines.keras3_jax.anchors", "lossmap.engines.keras3_jax.citations"

    def load_archive(self, path: str, safe_mode: bool):
        """`load_model` without compiling the initial values the archive overwrites (on JAX most of a
        load's time; `lossmap.engines.common.initial_values`)."""
        with initial_values_deferred():
            return super().load_archive(path, safe_mode)

    def summation(self) -> str:
        return (super().summation() + "; JAXTrainer.train_step differentiates it with jax.value_and_grad "
                "of compute_loss_and_updates (stateless_call, then stateless_compute_loss)")

    def custom_code_refusal(self, model, step_fn):
        return _steps.refusal(model, step_fn)

    def seed_random(self, seed: int):
        """Nothing to seed: every random draw of a Keras layer on JAX comes from a `SeedGenerator`, whose
        state is a variable the state snapshot puts back before each pass."""
