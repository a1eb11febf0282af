"""tf_keras: what the custom-training-code stage (`lossmap.steps`) needs to know about this Keras.

`compute_loss(x, y, y_pred, sample_weight)` is `compiled_loss(y, y_pred, sample_weight,
regularization_losses=self.losses)`; `compiled_loss` (`LossesContainer.__call__`) adds the
weighted per-output losses and, when given, `regularization_losses` with `tf.add_n`.
`Layer.losses` lists, layer by layer, the tensors added during the call and then each
callable loss (weight regularizers among them) evaluated at the read.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from lossmap.engines.base import Capture
from lossmap.engines.common.helpers import TRAINING_LAYERS, dense_grad
from lossmap.engines.tf_keras import capture as _capture


@dataclass
class Expansion:
    """A `compute_loss` / `compiled_loss` call opened into tf_keras's terms, each a tensor on the user's tape."""

    capture: Capture
    tensors: list
    regularizer_tensors: list = field(default_factory=list)


def overrides(model) -> dict:
    from tf_keras.src.engine.training import Model

    cls = type(model)
    return {
        "train_step": cls.train_step if cls.train_step is not Model.train_step else None,
        "compute_loss": cls.compute_loss if cls.compute_loss is not Model.compute_loss else None,
    }


def probe(engine, model):
    return _capture._LossProbe(engine)


def expand_keras_loss(engine, model, sig, call, loss_probe) -> Expansion:
    """The call as tf_keras computes it, term by term (inside the user's tape)."""
    from tf_keras.src.engine.compile_utils import LossesContainer
    from tf_keras.src.engine.training import Model

    name = getattr(call.fn, "__name__", "")
    if name == "compute_loss":
        bound = inspect.signature(Model.compute_loss).bind(None, *call.args, **call.kwargs).arguments
        regularization = True
    elif isinstance(call.fn, LossesContainer):
        bound = inspect.signature(LossesContainer.__call__).bind(None, *call.args, **call.kwargs).arguments
        bound["y"] = bound.get("y_true")
        regularization = bound.get("regularization_losses") is not None
    else:
        raise ValueError(f"{name} is not a tf_keras loss method lossmap expands")
    ys, y_pred, sw = bound.get("y"), bound.get("y_pred"), bound.get("sample_weight")
    entries = [e for e in _capture.compiled_entries(engine, model, sig, ys, y_pred, sw)
               if e["loss"] is not None and e["y_true"] is not None]
    compiled = [_capture._capture_compiled(e) for e in entries]
    tensors = []
    for e in entries:
        value, _, _ = _capture.keras_loss_value(e["loss"], e["y_true"], e["y_pred"], e["sample_weight"])
        tensors.append(value * e["weight"] if e["weight"] is not None else value)
    additional, regs = [], []
    if regularization:
        losses = list(model.losses)
        additional = additional_for(engine, model, losses, loss_probe)
        tensors += [t for t, a in zip(losses, additional) if a.kind != "weight_regularizer"]
        regs = [t for t, a in zip(losses, additional) if a.kind == "weight_regularizer"]
        # the capture lists shared terms first, then the regularizers (the order of the tensors)
        additional = [a for a in additional if a.kind != "weight_regularizer"] + \
                     [a for a in additional if a.kind == "weight_regularizer"]
    capture = Capture(compiled=compiled, additional=additional, compute_loss=None, compute_loss_error=None,
                      dtype=engine.tfk.backend.floatx(), epsilon=float(engine.tfk.backend.epsilon()))
    return Expansion(capture, tensors, regs)


def additional_for(engine, model, losses, loss_probe) -> list:
    """`model.losses` entry by entry, in the property's own order: for each layer, the tensors added
    during the call, then its callable losses (weight regularizers among them)."""
    normalised = loss_probe.saw_activity and _capture.activity_loss_divided_by_batch()
    tensors, callables, regs = _capture.loss_entries(model)
    counters: dict = {}

    def index(kind, layer):
        counters[(kind, layer.name)] = counters.get((kind, layer.name), 0) + 1
        return counters[(kind, layer.name)] - 1

    by_tensor = dict(zip([id(t) for _, t in tensors], _capture._added_tensors(tensors, loss_probe, normalised, index)))
    by_callable = dict(zip([id(c) for _, c in callables], _capture._added_callables(callables, index)))
    by_callable.update(zip([id(c) for _, _, _, c in regs], _capture._weight_regularizers(regs)))
    ordered = []
    for layer in model._flatten_layers():
        eager = [t for owner, t in tensors if owner is layer]
        ordered += [by_tensor[id(t)] for t in eager]
        ordered += [by_callable[id(c)] for c in layer._callable_losses if id(c) in by_callable]
    if len(ordered) != len(losses):
        raise ValueError(f"model.losses had {len(losses)} entries when the step read it; lossmap finds "
                         f"{len(ordered)}")
    return ordered


def builtin_loss_name(obj):
    from tf_keras.src.losses import Loss

    return _capture.builtin_fn_name(obj) if isinstance(obj, Loss) else None


def optimizer_classes():
    import tf_keras

    classes = [tf_keras.optimizers.Optimizer]
    legacy = getattr(tf_keras.optimizers, "legacy", None)
    if legacy is not None:
        classes.append(legacy.Optimizer)
    return tuple(classes)


def metric_classes():
    from tf_keras.src.metrics import Metric

    return (Metric,)


def variable_namer(model):
    """`layer/kernel`, by the layer that owns the variable (as the compiled path names it)."""
    owner = {}
    for layer in model._flatten_layers():
        for v in layer._trainable_weights + layer._non_trainable_weights:
            owner.setdefault(id(v), f"{layer.name}/{_capture.short_var_name(v)}")
    return lambda v: owner.get(id(v), _capture.short_var_name(v))


def dense_gradient(g):
    import tensorflow as tf

    return dense_grad(tf, g)


def training_layers(model) -> list:
    out = []
    for layer in model._flatten_layers(include_self=False):
        name = type(layer).__name__
        leaf = not list(layer._flatten_layers(include_self=False))
        if name in TRAINING_LAYERS or (leaf and getattr(layer, "_expects_training_arg", False)
                                       and not type(layer).__module__.startswith("tf_keras.")):
            out.append(layer.name)
    return out


def first_update(engine, optimizer, gradients: dict, variables: dict) -> dict:
    tf = engine.tf
    copy = type(optimizer).from_config(optimizer.get_config())
    paths = [p for p in gradients if gradients[p] is not None and p in variables]
    temp = [tf.Variable(np.array(variables[p])) for p in paths]
    copy.apply_gradients(zip([tf.convert_to_tensor(gradients[p]) for p in paths], temp))
    return {p: np.array(t) - np.array(variables[p]) for p, t in zip(paths, temp)}


def as_tensors(structure):
    import tensorflow as tf

    return tf.nest.map_structure(lambda a: None if a is None else tf.convert_to_tensor(a), structure)
