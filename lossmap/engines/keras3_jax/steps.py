"""Keras 3 on JAX: what the custom-training-code stage (`lossmap.steps`) needs to know about this backend.

The loss side is the TensorFlow engine's (`lossmap.engines.keras3.steps`: probes, how a call of
`compute_loss` expands, `model.losses`, optimizer and metric classes). What differs: overrides are
judged against `JAXTrainer.train_step`, batches become JAX arrays, gradients are JAX arrays already
dense.
"""
from __future__ import annotations

import inspect

import numpy as np

from lossmap.engines.keras3 import steps as _keras3_steps
from lossmap.engines.keras3.steps import (  # noqa: F401  (the engine reads them from this module)
    Expansion,
    additional_for,
    builtin_loss_name,
    expand_keras_loss,
    first_update,
    metric_classes,
    optimizer_classes,
    probe,
    training_layers,
    variable_namer,
)


def overrides(model) -> dict:
    """{"train_step": function or None, "compute_loss": function or None}: against `JAXTrainer`."""
    from keras.src.backend.jax.trainer import JAXTrainer

    return _keras3_steps.overrides(model, JAXTrainer)


def refusal(model, step_fn):
    """Why custom training code is not explained on JAX, in one line (`Engine.custom_code_refusal`).

    lossmap.steps follows a step's loss to the `tape.gradient` call that differentiates it and
    takes each addend's gradient on that tape; on JAX the loss is differentiated inside
    `jax.value_and_grad` (Keras's own train_step calls it around `compute_loss`), which has no
    tape to record on and runs the function it differentiates with tracers.
    """
    found = overrides(model)
    cls = type(model).__name__
    if step_fn is not None:
        what = f"the training step {getattr(step_fn, 'spec', None) or 'given with --step'}"
    elif found["train_step"] is not None:
        what = f"{cls} overrides train_step({', '.join(list(inspect.signature(found['train_step']).parameters)[1:])})"
    else:
        what = f"{cls} overrides compute_loss"
    return (f"lossmap does not explain custom training code on the JAX backend yet ({what}): it follows a "
            "loss to a GradientTape, and JAX differentiates it inside jax.value_and_grad; run it with "
            "KERAS_BACKEND=tensorflow, or check the model without the override")


def dense_gradient(g):
    return None if g is None else np.array(g)


def as_tensors(structure):
    import jax.numpy as jnp
    from keras import tree

    return tree.map_structure(lambda a: None if a is None else jnp.asarray(a), structure)
