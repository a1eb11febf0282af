"""Keras 3 on JAX: the functions that build a model's training loss, as source anchors.

The walkthrough of the TensorFlow engine (`lossmap.engines.keras3.anchors`), with the JAX
backend's own steps in place of TensorFlow's: `JAXTrainer.train_step` (a stateless step that
differentiates with `jax.value_and_grad`), `JAXTrainer.compute_loss_and_updates` (the forward
pass with `stateless_call`, the loss with `stateless_compute_loss`), and the crossentropies of
`keras/src/backend/jax/nn.py` (probabilities clipped, no logits) instead of TensorFlow's
`_get_logits`.

    >>> [a.key for a in anchors()][:3]
    ['train_step', 'compute_loss_and_updates', 'compute_loss']
"""
from __future__ import annotations

import libcst.matchers as m

from lossmap.engines.common.anchor_kit import assign_to, call_attr, gradient_of_total, method_call, self_attr
from lossmap.engines.keras3 import anchors as k3
from lossmap.engines.keras3 import notes as k3_notes
from lossmap.engines.keras3_jax import notes
from lossmap.sources import Anchor, Stmt

JAX_TRAINER = "keras.src.backend.jax.trainer"
JAX_NN = "keras.src.backend.jax.nn"

EXPLAIN_TRAIN_STEP = (
    "One training step with the JAX backend. The step is stateless: it receives the values of every "
    "variable (`state`) and returns new ones instead of assigning them. `jax.value_and_grad` of "
    "`compute_loss_and_updates` gives the total loss and its gradient for every trainable weight in one "
    "call, the optimizer's `stateless_apply` computes the new weights, and `_update_metrics_variables` "
    "records the loss in the loss tracker (the 'loss' fit() prints). Every term below reaches the "
    "weights only through this one number.")
EXPLAIN_COMPUTE_LOSS_AND_UPDATES = (
    "The function JAX differentiates. The model runs forward in training mode with `stateless_call` "
    "(the trainable weights are the arguments of the differentiation), the `add_loss` entries that "
    "pass creates are handed to `compute_loss` through `_losses_override`, and `stateless_compute_loss` "
    "runs `Trainer.compute_loss` with the same values.")
EXPLAIN_CROSSENTROPY = (
    "The JAX backend's crossentropy. Unlike TensorFlow's, it never looks for logits cached on the "
    "output (a JAX array cannot carry them): with from_logits=False the probabilities are clipped to "
    "[epsilon, 1 - epsilon] and their log taken, so after a softmax or sigmoid output the loss is "
    "bounded by -log(epsilon), and the gradient vanishes where the clip bites.")


def _train_step():
    return Anchor(
        key="train_step", title="JAXTrainer.train_step: one stateless training step",
        module=JAX_TRAINER, qualname="JAXTrainer.train_step",
        explanation=EXPLAIN_TRAIN_STEP, when=k3_notes.uses_default_train_step,
        statements=[
            Stmt(assign_to("grad_fn", call_attr("jax", "value_and_grad")), notes.value_and_grad,
                 "grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)"),
            Stmt(m.Assign(value=m.Call(func=m.Name("grad_fn"))), gradient_of_total,
                 "(loss, aux), grads = grad_fn(...)"),
            Stmt(method_call(self_attr("optimizer"), "stateless_apply"), k3_notes.optimizer,
                 "self.optimizer.stateless_apply(optimizer_variables, grads, trainable_variables)"),
            Stmt(m.Call(func=self_attr("_update_metrics_variables")),
                 "fit() logs the running mean of this total as 'loss'", "self._update_metrics_variables(...)"),
            Stmt(m.Return(), notes.new_state, "return logs, state"),
        ])


def _compute_loss_and_updates():
    return Anchor(
        key="compute_loss_and_updates", title="JAXTrainer.compute_loss_and_updates: what is differentiated",
        module=JAX_TRAINER, qualname="JAXTrainer.compute_loss_and_updates",
        explanation=EXPLAIN_COMPUTE_LOSS_AND_UPDATES, when=k3_notes.uses_default_train_step,
        statements=[
            Stmt(m.Assign(value=m.Call(func=self_attr("stateless_call"))), notes.stateless_call,
                 "y_pred, non_trainable_variables, losses = self.stateless_call(...)"),
            Stmt(m.Assign(value=m.Call(func=self_attr("stateless_compute_loss"))), notes.stateless_compute_loss,
                 "loss, variables = self.stateless_compute_loss(...)"),
        ])


def _crossentropy(fn):
    return Anchor(
        key=f"jax_{fn}", title=f"{fn} (JAX backend): from the probabilities, clipped",
        module=JAX_NN, qualname=fn,
        explanation=EXPLAIN_CROSSENTROPY, when=lambda a: bool(notes.from_probabilities(a, fn)),
        statements=[
            Stmt(assign_to("output", call_attr("jnp", "clip")), notes.clipped(fn),
                 "output = jnp.clip(output, backend.epsilon(), 1.0 - backend.epsilon())"),
        ])


def anchors() -> list:
    """The Keras 3 walkthrough on JAX, in reading order (see `lossmap.sources.walkthrough`)."""
    swapped = {k3._train_step: [_train_step, _compute_loss_and_updates],
               k3._get_logits: [lambda fn=fn: _crossentropy(fn) for fn in sorted(set(notes.CROSSENTROPIES.values()))]}
    return ([build() for step in k3._FROM_TRAIN_STEP_DOWN for build in swapped.get(step, [step])]
            + [k3._regularizer(n) for n in k3.REGULARIZER_CLASSES] + [k3._aggregate_additional_loss()])
