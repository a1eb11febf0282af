"""Keras 3 on JAX: the engine-difference and surprise citations, and the facts about a model they read.

The TensorFlow engine's (`lossmap.engines.keras3.citations`), with the statements that live in the
backend cited from the JAX backend's files: the loss scaling in `compute_loss_and_updates` and the
binary crossentropy and the clip of `nn.py`. The facts are the same, with one replica (JAX runs no tf.distribute).
"""
from __future__ import annotations

from lossmap.engines.common.anchor_kit import assign_to, call_attr, method_call, self_attr
from lossmap.engines.keras3 import citations as k3
from lossmap.engines.keras3_jax.anchors import JAX_NN, JAX_TRAINER

import libcst.matchers as m


def specs() -> dict:
    """key -> (module, qualname, [(matcher, label[, within]), ...]): the statements each difference cites."""
    return {
        **k3.specs(),
        "k3_bce": (
            JAX_NN, "binary_crossentropy",
            [(assign_to("bce", m.BinaryOperation(left=m.Name("target"), operator=m.Multiply())),
              "bce = target * jnp.log(output)")]),
        "k3_ce_clip": (
            JAX_NN, "sparse_categorical_crossentropy",
            [(assign_to("output", call_attr("jnp", "clip")),
              "output = jnp.clip(output, backend.epsilon(), 1.0 - backend.epsilon())")]),
        "k3_scale_loss": (
            JAX_TRAINER, "JAXTrainer.compute_loss_and_updates",
            [(method_call(self_attr("optimizer"), "scale_loss"), "loss = self.optimizer.scale_loss(loss)")]),
    }


def facts(engine, model, sig) -> dict:
    """`Engine.engine_facts`, as on TensorFlow (`shared_facts` counts one replica off TensorFlow), without
    the names a traced TensorFlow fit opens scopes with (JAX's `name_scope` checks no names), with
    the backend's crossentropies clipping probabilities (`lossmap.surprises.backends`), and no unused
    override (its trainer calls `stateless_compute_loss`)."""
    return dict(k3.facts(engine, model, sig), scoped_names=[], crossentropy_clips=True,
                unused_overrides=[])  # JAXTrainer calls stateless_compute_loss: custom code (`steps.py`)
