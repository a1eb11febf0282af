"""Keras 3 on JAX: what the custom-training-code stage (`lossmap.steps`) needs to know about this backend.

The loss side is the TensorFlow engine's (`lossmap.engines.keras3.steps`: probes, how a call of
`compute_loss` expands, `model.losses`, optimizer and metric classes). What differs: overrides are
judged against `JAXTrainer.train_step`, batches become JAX arrays, gradients are JAX arrays already
dense.
"""
from __future__ import annotations

import numpy as np

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
    """{"train_step": function or None, "compute_loss": function or None}: the user's overrides."""
    from keras.src.backend.jax.trainer import JAXTrainer
    from keras.src.trainers.trainer import Trainer

    cls = type(model)
    return {
        "train_step": cls.train_step if cls.train_step is not JAXTrainer.train_step else None,
        "compute_loss": cls.compute_loss if cls.compute_loss is not Trainer.compute_loss else None,
    }


def dense_gradient(g):
    return None if g is None else np.array(g)


def as_tensors(structure):
    import jax.numpy as jnp
    from keras import tree

    return tree.map_structure(lambda a: None if a is None else jnp.asarray(a), structure)
