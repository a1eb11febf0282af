"""Keras 3: what the custom-training-code stage (`lossmap.steps`) needs to know about this Keras.

Which methods a model overrides, the probe a step's forward pass runs under, how a call of
`compute_loss` expands into the compile-time inventory (with each term as a tensor on the
user's tape), how the entries of `model.losses` map to terms, and the optimizer and metric
classes a step's state lives in.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from lossmap.engines.base import Capture
from lossmap.engines.common.helpers import TRAINING_LAYERS, dense_grad
from lossmap.engines.keras3 import capture as _capture



@dataclass
class Expansion:
    """A `compute_loss` call opened into Keras's terms, each also a tensor on the user's tape."""

    capture: Capture
    tensors: list  # compiled and add_loss/activity terms' contributions, in inventory order
    regularizer_tensors: list = field(default_factory=list)  # one per regularized variable, same order


def overrides(model, trainer=None) -> dict:
    """{"train_step": function or None, "compute_loss": function or None}: the user's overrides, against
    the backend's `trainer` class (default: TensorFlow's)."""
    from keras.src.trainers.trainer import Trainer

    if trainer is None:
        from keras.src.backend.tensorflow.trainer import TensorFlowTrainer as trainer
    cls = type(model)
    return {
        "train_step": cls.train_step if cls.train_step is not trainer.train_step else None,
        "compute_loss": cls.compute_loss if cls.compute_loss is not Trainer.compute_loss else None,
    }


def probe(engine, model):
    return _capture._LossProbe(model)


# the Trainer method whose signature binds a call's arguments (x, y, y_pred, sample_weight)
KERAS_LOSS_SIGNATURES = {"compute_loss": "compute_loss", "_compute_loss": "compute_loss",
                         "stateless_compute_loss": "stateless_compute_loss"}


def bound_loss_arguments(call) -> dict:
    """A Keras loss method call's arguments by name, as that method's signature binds them."""
    from keras.src.trainers.trainer import Trainer

    name = KERAS_LOSS_SIGNATURES[getattr(call.fn, "__name__", "")]
    return inspect.signature(getattr(Trainer, name)).bind(None, *call.args, **call.kwargs).arguments


def expand_keras_loss(engine, model, sig, call, loss_probe) -> Expansion:
    """`compute_loss(x, y, y_pred, sample_weight)` as Keras computes it: `CompileLoss` on (y, y_pred,
    sample_weight) plus every entry of `model.losses`. Runs inside the user's tape."""
    name = getattr(call.fn, "__name__", "")
    if name not in KERAS_LOSS_SIGNATURES:
        raise ValueError(f"{name} is not a Keras 3 loss method lossmap expands")
    bound = bound_loss_arguments(call)
    ys, y_pred, sw = bound.get("y"), bound.get("y_pred"), bound.get("sample_weight")
    compiled = _capture._compiled_captures(engine, model, sig, ys, y_pred, sw) if y_pred is not None else []
    normalised = loss_probe.saw_activity and _capture.activity_loss_divided_by_batch()
    additional = _capture._layer_losses(model, loss_probe, normalised) + _capture._weight_regularizers(engine, model)
    tensors, regularized, _ = _capture.gradient_targets(engine, model, ys, y_pred, sw) if y_pred is not None \
        else ([], [], None)
    if y_pred is None:
        tensors = [model._aggregate_additional_loss(t) for layer in model._flatten_layers(include_self=True)
                   for t in layer._losses]
        regularized = [v for v in model.trainable_variables if getattr(v, "regularizer", None) is not None]
    regs = [engine.keras.ops.cast(v.regularizer(v), "float32") for v in regularized]
    capture = Capture(compiled=compiled, additional=additional, compute_loss=None, compute_loss_error=None,
                      dtype=engine.keras.backend.floatx(), epsilon=float(engine.keras.backend.epsilon()))
    return Expansion(capture, tensors, regs)


def additional_for(engine, model, losses, loss_probe) -> list:
    """`model.losses` as read by the step, entry by entry: each layer's `add_loss` tensors (activity
    regularizers among them), then each trainable variable's regularizer (`Layer.losses`)."""
    normalised = loss_probe.saw_activity and _capture.activity_loss_divided_by_batch()
    entries = _capture._layer_losses(model, loss_probe, normalised) + _capture._weight_regularizers(engine, model)
    if len(entries) != len(losses):
        raise ValueError(f"model.losses had {len(losses)} entries when the step read it; the model has "
                         f"{len(entries)} now")
    return entries


def builtin_loss_name(obj):
    """The built-in loss function a Keras loss object computes (`sparse_categorical_crossentropy`), or None."""
    from keras.src.losses.loss import Loss

    return _capture.builtin_fn_name(obj) if isinstance(obj, Loss) else None


def optimizer_classes():
    from keras.src.optimizers.base_optimizer import BaseOptimizer

    return (BaseOptimizer,)


def metric_classes():
    from keras.src.metrics.metric import Metric

    return (Metric,)


def variable_namer(model):
    """Variable -> the path the output names it by (`dense/kernel`), as the compiled path does."""
    return lambda v: getattr(v, "path", None) or v.name


def dense_gradient(g):
    import tensorflow as tf

    return dense_grad(tf, g)


def training_layers(model) -> list:
    """Paths of the model's layers that compute something else in training (Dropout, BatchNormalization, ...)."""
    out = []
    for layer in model._flatten_layers(include_self=False):
        name = type(layer).__name__
        if name in TRAINING_LAYERS or (getattr(layer, "_call_has_training_arg", False)
                                       and not type(layer).__module__.startswith("keras.")
                                       and not list(layer._flatten_layers(include_self=False))):
            out.append(_capture.layer_path(layer))
    return out


def first_update(engine, optimizer, gradients: dict, variables: dict) -> dict:
    """The update a fresh copy of `optimizer` would make from `gradients` (path -> array) at the
    variables' current values, per variable (the model's variables are not touched)."""
    keras = engine.keras
    copy = type(optimizer).from_config(optimizer.get_config())
    paths = [p for p in gradients if gradients[p] is not None and p in variables]
    temp = [keras.Variable(np.array(variables[p]), name=p.replace("/", "_")) for p in paths]
    copy.apply([keras.ops.convert_to_tensor(gradients[p]) for p in paths], temp)
    return {p: np.array(t) - np.array(variables[p]) for p, t in zip(paths, temp)}


def as_tensors(structure):
    import tensorflow as tf

    return tf.nest.map_structure(lambda a: None if a is None else tf.convert_to_tensor(a), structure)
