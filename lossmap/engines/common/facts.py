"""Facts about a live model that `lossmap.surprises` reads and both engines gather the same way:
the replicas of its strategy, its loss-scale optimizer, the layers that can carry a weight
regularizer, and the order of its dict outputs. Each engine's `citations.facts` adds them
(with what differs: how to flatten, how to read the loss scale, which names open a scope).

    >>> FAMILIES["DepthwiseConv2D"], FAMILIES["Dense"]
    ('convolution', 'dense')
"""
from __future__ import annotations

import numpy as np

from lossmap.engines.common.helpers import reg_config

_CONVOLUTIONS = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
                 "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")
# Layers a config edit regularizes together: one family each (a class name -> its family).
FAMILIES = {
    **{name: "convolution" for name in _CONVOLUTIONS},
    "Dense": "dense", "EinsumDense": "dense",
    "Embedding": "embedding",
    "LSTM": "recurrent", "GRU": "recurrent", "SimpleRNN": "recurrent",
}
# (regularizer argument, the attributes that may hold the weight it regularizes): a layer's main weights,
# not its biases (Keras 3's DepthwiseConv2D keeps its depthwise kernel as `kernel`).
REGULARIZED_WEIGHTS = (("kernel_regularizer", ("kernel",)), ("depthwise_regularizer", ("depthwise_kernel", "kernel")),
                       ("pointwise_regularizer", ("pointwise_kernel",)), ("embeddings_regularizer", ("embeddings",)))


def replicas(model) -> int:
    """How many replicas the model's own strategy runs `fit` on (1 without tf.distribute)."""
    try:
        return int(model.distribute_strategy.num_replicas_in_sync)
    except Exception:  # noqa: BLE001 - no strategy to speak of
        return 1


def loss_scale(model, read_scale) -> dict | None:
    """The model's optimizer when it is a LossScaleOptimizer: its class, inner optimizer and scale now."""
    opt = getattr(model, "optimizer", None)
    if opt is None or not any(c.__name__.endswith("LossScaleOptimizer") for c in type(opt).__mro__):
        return None
    inner = getattr(opt, "inner_optimizer", None)
    try:
        scale = float(read_scale(opt))
    except Exception:  # noqa: BLE001 - the finding says "its dynamic scale" instead of a number
        scale = None
    growth = getattr(opt, "dynamic_growth_steps", None)
    return {"class": type(opt).__name__, "inner": type(inner).__name__ if inner is not None else None,
            "scale": scale, "growth_steps": int(growth) if isinstance(growth, int) else None}


def output_layers(model) -> set:
    """Names of the layers that produce the model's outputs (a functional model's)."""
    names = set()
    try:
        outputs = list(model.outputs or [])
    except Exception:  # noqa: BLE001 - a subclassed model has no symbolic outputs
        outputs = []
    for t in outputs:
        hist = getattr(t, "_keras_history", None)
        layer = getattr(hist, "operation", None) or getattr(hist, "layer", None)
        if layer is not None:
            names.add(layer.name)
    return names


def regularizable_layers(model) -> list:
    """Every layer of a family in `FAMILIES`: which of its main weights carry a regularizer.

    The weights' values are read only when asked (`read`): a finding needs those of a few layers.
    """
    outputs = output_layers(model)
    out = []
    for layer in model._flatten_layers(include_self=False):
        family = FAMILIES.get(type(layer).__name__)
        if family is None:
            continue
        weights, seen = [], set()
        for arg, attrs in REGULARIZED_WEIGHTS:
            entry = _weight_entry(layer, arg, attrs) if hasattr(layer, arg) else None
            if entry is not None and entry["variable"] not in seen:
                seen.add(entry["variable"])
                weights.append(entry)
        if weights:
            out.append({"layer": getattr(layer, "path", None) or layer.name, "class": type(layer).__name__,
                        "family": family, "trainable": bool(layer.trainable), "output": layer.name in outputs,
                        "weights": weights})
    return out


def _weight_entry(layer, arg, attrs):
    # a recurrent layer keeps its kernel on its cell
    owners = (layer, getattr(layer, "cell", None))
    variable = next((v for attr in attrs for o in owners if o is not None
                     for v in [getattr(o, attr, None)] if v is not None and hasattr(v, "shape")), None)
    if variable is None:
        return None
    reg = getattr(layer, arg, None)
    path = getattr(variable, "path", None) or variable.name.split(":")[0]
    return {"argument": arg, "variable": path, "regularizer": type(reg).__name__ if reg is not None else None,
            "config": reg_config(reg), "builtin": reg is not None and type(reg).__module__.split(".")[0] in
            ("keras", "tf_keras"), "read": lambda v=variable: np.array(v)}


def output_orders(code_order, flatten) -> tuple:
    """(the dict outputs in the order the code wrote them, in the order `flatten` pairs a list with them)."""
    if not code_order or len(code_order) < 2:
        return None, None
    return list(code_order), list(flatten({k: k for k in code_order}))
