"""Keras 3 on PyTorch: what the custom-training-code stage (`lossmap.steps`) needs to know.

Keras 3's answers (`lossmap.engines.keras3.steps`) hold on torch, except: the default
`train_step` to compare an override against is `TorchTrainer.train_step`; a gradient is a
torch tensor (`dense_gradient`); a batch becomes torch tensors (`as_tensors`); the optimizer's
first update is taken without autograd recording (as `TorchTrainer.train_step` applies it).
A step's gradient on torch is what `loss.backward()` leaves in each parameter's `.grad`:
`lossmap.steps` reads it through `gradients_of`.
"""
from __future__ import annotations

from lossmap.engines.common.helpers import as_numpy
from lossmap.engines.keras3 import steps as _k3
from lossmap.engines.keras3.steps import (  # noqa: F401 - the same on torch
    KERAS_LOSS_SIGNATURES,
    Expansion,
    additional_for,
    builtin_loss_name,
    metric_classes,
    optimizer_classes,
    probe,
    training_layers,
    variable_namer,
)


def overrides(model) -> dict:
    """{"train_step": function or None, "compute_loss": function or None}: the user's overrides."""
    from keras.src.backend.torch.trainer import TorchTrainer
    from keras.src.trainers.trainer import Trainer

    cls = type(model)
    return {
        "train_step": cls.train_step if cls.train_step is not TorchTrainer.train_step else None,
        "compute_loss": cls.compute_loss if cls.compute_loss is not Trainer.compute_loss else None,
    }


def expand_keras_loss(engine, model, sig, call, loss_probe):
    """Keras 3's expansion of a `compute_loss` call, without Keras importing TensorFlow for a loss's config."""
    from lossmap.engines.keras3_torch.capture import tensorflow_left_alone

    with tensorflow_left_alone():
        return _k3.expand_keras_loss(engine, model, sig, call, loss_probe)


def no_objective_reason(d):
    """Why lossmap finds nothing differentiated in a torch step: it calls `loss.backward()` (the torch way),
    which lossmap does not split into terms; None when the step does not."""
    import libcst.matchers as m

    calls = m.findall(d.step.function, m.Call(func=m.Attribute(attr=m.Name("backward"))))
    if not calls:
        return None
    target = d.step.code(calls[0].func.value)
    try:
        where = f"{d.step.file}:{d.step.line_of(calls[0])}"
    except KeyError:
        where = f"{d.step.file}:{d.step.start_line}"
    instead = ("override compute_loss instead (Keras's train_step differentiates what it returns, and lossmap "
               "explains that on torch)" if d.kind == "train_step" else
               "leave out --step to explain the model's compiled loss (model.compute_loss)")
    return (f"{d.fn.__qualname__} ({where}) differentiates {target} with {target}.backward(): lossmap does not "
            f"split a PyTorch training step with loss.backward() into terms yet; {instead}, or explain the "
            "step on the TensorFlow backend")


def dense_gradient(g):
    """A torch gradient as a NumPy array (None stays None)."""
    return as_numpy(g)


def first_update(engine, optimizer, gradients: dict, variables: dict) -> dict:
    """Keras 3's first update, with torch recording nothing (the optimizer writes variables in place)."""
    import torch

    with torch.no_grad():
        return _k3.first_update(engine, optimizer, gradients, variables)


def as_tensors(structure):
    """A batch structure of arrays as torch tensors (on Keras's device)."""
    from keras import ops, tree

    return tree.map_structure(lambda a: None if a is None else ops.convert_to_tensor(a), structure)
