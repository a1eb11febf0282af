"""Keras 3 on PyTorch: the functions that build a model's training loss, as source anchors.

Keras 3's walkthrough (`lossmap.engines.keras3.anchors`) with the torch backend's own files
in place of TensorFlow's: the step is `TorchTrainer.train_step` in
`keras/src/backend/torch/trainer.py` (`zero_grad`, `loss.backward()`, `optimizer.apply`),
and where TensorFlow reads a softmax's logits (`_get_logits`), torch nn.py's crossentropies
compute from the clipped probabilities (`keras/src/backend/torch/nn.py`).

    >>> [a.key for a in anchors()][:3]
    ['train_step', 'compute_loss', 'compiled_loss']
"""
from __future__ import annotations

import libcst.matchers as m

from lossmap.engines.common.anchor_kit import (
    assign_to as _assign_to,
    call_attr,
    method_call as _method_call,
    self_attr as _self_attr,
)
from lossmap.engines.keras3 import anchors as _k3
from lossmap.engines.keras3 import notes as _k3_notes
from lossmap.engines.keras3_torch import notes
from lossmap.sources import Anchor, Stmt

TORCH_TRAINER = "keras.src.backend.torch.trainer"
TORCH_NN = "keras.src.backend.torch.nn"

EXPLAIN_TRAIN_STEP = (
    "One training step with the PyTorch backend: the model runs forward in training mode, "
    "`zero_grad()` clears the gradients left from the previous step, `_compute_loss` adds up every "
    "term of the loss into one number, the loss tracker records it (that is the 'loss' fit() prints), "
    "`loss.backward()` has torch autograd accumulate the gradient of that one number into each "
    "trainable parameter's `.grad`, and the optimizer applies those gradients. Every term below "
    "reaches the weights only through this sum.")
EXPLAIN_CROSSENTROPY = (
    "The PyTorch backend's crossentropy. With from_logits=True it calls torch's own "
    "(`binary_cross_entropy_with_logits`, `cross_entropy`); otherwise it clips the probabilities to "
    "[epsilon, 1 - epsilon] (the categorical ones first normalised to sum 1) and takes their log. "
    "A softmax or sigmoid output carries its logits (`_keras_logits`) on torch too, but this backend "
    "never reads them: where the TensorFlow backend computes from the logits, torch computes from the "
    "clipped probabilities, so the two can differ once a probability nears 0 or 1.")


def _train_step():
    return Anchor(
        key="train_step", title="TorchTrainer.train_step: one training step",
        module=TORCH_TRAINER, qualname="TorchTrainer.train_step",
        explanation=EXPLAIN_TRAIN_STEP, when=_k3_notes.uses_default_train_step,
        statements=[
            Stmt(m.Call(func=_self_attr("zero_grad")), notes.zero_grad, "self.zero_grad()"),
            Stmt(_assign_to("loss", m.Call(func=_self_attr("_compute_loss"))), _k3_notes.train_compute,
                 "loss = self._compute_loss(...)"),
            Stmt(_method_call(_self_attr("_loss_tracker"), "update_state"),
                 "fit() logs the running mean of this total as 'loss'", "self._loss_tracker.update_state(...)"),
            Stmt(_method_call(m.Name("loss"), "backward"), notes.backward, "loss.backward()"),
            Stmt(_method_call(_self_attr("optimizer"), "apply"), notes.apply,
                 "self.optimizer.apply(gradients, trainable_weights)"),
        ])


def _crossentropy(fn_name, with_logits):
    """torch nn.py's `fn_name`: the clipping and log for probabilities, torch's own call for logits."""
    return Anchor(
        key=f"torch_{fn_name}", title=f"{fn_name} (PyTorch backend): the crossentropy",
        module=TORCH_NN, qualname=fn_name, explanation=EXPLAIN_CROSSENTROPY,
        when=lambda a: bool(notes.crossentropy_terms(fn_name)(a)),
        statements=[
            Stmt(_assign_to("output", call_attr("torch", "clip")), notes.on_probabilities(fn_name),
                 "output = torch.clip(output, epsilon, 1 - epsilon)", when=notes.probabilities(fn_name)),
            Stmt(call_attr("tnn", with_logits), notes.on_logits(fn_name), f"tnn.{with_logits}(...)",
                 when=notes.logits(fn_name)),
        ])


def anchors() -> list:
    """The Keras 3 walkthrough on torch, in reading order (see `lossmap.sources.walkthrough`)."""
    out = []
    for anchor in _k3.anchors():
        if anchor.key == "train_step":
            out.append(_train_step())
        elif anchor.key == "get_logits":
            out += [_crossentropy("binary_crossentropy", "binary_cross_entropy_with_logits"),
                    _crossentropy("categorical_crossentropy", "log_softmax"),
                    _crossentropy("sparse_categorical_crossentropy", "cross_entropy")]
        elif anchor.key != "scale_loss_for_distribution":  # TensorFlow's tf.distribute only
            out.append(anchor)
    return out
